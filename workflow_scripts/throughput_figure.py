import pandas as pd

from inference_eval.io import write_figure
from inference_eval.report.batch_figures import throughput_figure

tables = {d: pd.read_csv(p) for d, p in zip(snakemake.params.datasets, snakemake.input.tables)}
write_figure(snakemake.output[0], throughput_figure(tables, f"Batch throughput on {snakemake.wildcards.hardware}"))
