"""Rule dataset_table (rules/report.smk): results/{hardware}/{dataset}_table.csv from the batch records and
the dataset's bound."""
from inference_eval.io import write_csv
from inference_eval.report.tables import dataset_table
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    write_csv(snakemake.output[0], dataset_table(snakemake.input.records, snakemake.input.bound))  # noqa: F821
