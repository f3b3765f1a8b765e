# Thin entry of rule gguf (rules/models.smk): a GGUF file with the model's random weights.
from inference_eval.models.prepare import prepare_gguf
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):
    prepare_gguf(snakemake.params.cfg, snakemake.output.gguf, snakemake.wildcards.dtype)
