# Thin entry of rule module_figures (rules/profiling.smk): op shares across the sweeps; measured vs predicted.
from inference_eval.profiling.workflow import write_figures
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    write_figures(list(snakemake.input.modules), snakemake.input.coefficients,  # noqa: F821
                  list(snakemake.input.points), snakemake.output.shares, snakemake.output.fit)  # noqa: F821
