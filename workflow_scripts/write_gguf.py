from inference_eval.models.prepare import prepare_gguf

prepare_gguf(snakemake.params.cfg, snakemake.output.gguf, snakemake.wildcards.dtype)
