# Input and parameter functions of rules/models.smk (which includes this file).


def model_job(wildcards, *sections, **choices):
    """Only the config sections a models job depends on, so that e.g. a dataset override does not
    rebuild every model file (params are part of Snakemake's rerun check)."""
    cfg = PIPELINE.job(model=wildcards.model, **choices)
    return {k: cfg[k] for k in sections}


def trtllm_engine_inputs(wildcards):
    # The engine build needs weights on disk; where TensorRT-LLM is not importable the build only
    # records "not installed", so a 7B weights file (13 GB) is not written just for that.
    files = {"hf": f"{RESULTS}/models/{wildcards.model}/hf/config.json"}
    if importable("tensorrt_llm"):
        files["weights"] = f"{RESULTS}/models/{wildcards.model}/weights/model.safetensors"
    return files
