# Thin entry of rules prepare_model and model_weights (rules/models.smk).
from inference_eval.models.prepare import prepare_hf_folder, prepare_weights
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):
    if snakemake.rule == "model_weights":
        prepare_weights(snakemake.params.cfg, snakemake.output.weights)
    else:
        prepare_hf_folder(snakemake.params.cfg, snakemake.output.config)
