from inference_eval.models.prepare import prepare_hf_folder, prepare_weights

if snakemake.rule == "model_weights":
    prepare_weights(snakemake.params.cfg, snakemake.output.weights)
else:
    prepare_hf_folder(snakemake.params.cfg, snakemake.output.config)
