"""Rule dataset_figures (rules/datasets.smk): one variant's length figure and summary table."""
from inference_eval.datasets.figures import write_figures
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    write_figures(snakemake.input.rows, snakemake.input.manifests, snakemake.wildcards.variant,  # noqa: F821
                  snakemake.output.figure, snakemake.output.summary)  # noqa: F821
