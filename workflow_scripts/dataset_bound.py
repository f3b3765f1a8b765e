"""Rule dataset_bound (dataset_bound_tp): results/{hardware}/{dataset}_bound.csv (_bound_tp{degree}.csv),
one row per model."""
from inference_eval.rule_log import tee_to_log
from inference_eval.theory.workflow import write_bound_table

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    write_bound_table(snakemake.output.bound, snakemake.input.rows, snakemake.params.cfgs,  # noqa: F821
                      snakemake.wildcards.dataset, int(snakemake.wildcards.get("degree", 1)))  # noqa: F821
