"""Rule dataset_bound: results/{hardware}/{dataset}_bound.csv, one row per model."""
from inference_eval.theory.workflow import write_bound_table

write_bound_table(snakemake.output.bound, snakemake.input.rows, snakemake.params.cfgs,  # noqa: F821
                  snakemake.wildcards.dataset)  # noqa: F821
