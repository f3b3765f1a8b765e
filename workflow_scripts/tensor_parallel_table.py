"""Rule tensor_parallel_table: results/{hardware}/tensor_parallel/{dataset}_scaling.csv."""
from inference_eval.report.tensor_parallel import write_scaling_table
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    bounds = dict(zip(snakemake.params.degrees, snakemake.input.bounds))  # noqa: F821
    write_scaling_table(snakemake.output[0], snakemake.params.planned, bounds)  # noqa: F821
