from inference_eval.io import write_csv
from inference_eval.report.tables import dataset_table

write_csv(snakemake.output[0], dataset_table(snakemake.input.records, snakemake.input.bound))
