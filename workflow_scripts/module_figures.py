# Thin entry of rule module_figures (rules/profiling.smk): op shares across the sweeps; measured vs predicted.
from inference_eval.profiling.workflow import write_figures

write_figures(list(snakemake.input.modules), snakemake.input.coefficients, list(snakemake.input.points),
              snakemake.output.shares, snakemake.output.fit)
