# Thin entry of rule fit_coefficients (rules/profiling.smk): the time models of every profiled library.
from inference_eval.profiling.workflow import fit_coefficients
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):
    fit_coefficients(list(snakemake.input.points), snakemake.output.coefficients, snakemake.output.predictions,
                     list(snakemake.input.modules))
