"""Rule throughput_figure (rules/report.smk): results/{hardware}/figures/throughput.png from the dataset tables."""
import pandas as pd

from inference_eval.io import write_figure
from inference_eval.report.batch_figures import throughput_figure
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    tables = {d: pd.read_csv(p) for d, p in zip(snakemake.params.datasets, snakemake.input.tables)}  # noqa: F821
    write_figure(snakemake.output[0],  # noqa: F821
                 throughput_figure(tables, f"Batch throughput on {snakemake.wildcards.hardware}"))  # noqa: F821
