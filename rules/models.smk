# Model preparation: HF config folders (no weights), random weights where a server needs files,
# GGUF for llama.cpp, TensorRT-LLM engine builds. Paths are the ones `model_files()` (common.smk) names.


def model_job(wildcards, *sections, **choices):
    """Only the config sections a models job depends on, so that e.g. a dataset override does not
    rebuild every model file (params are part of Snakemake's rerun check)."""
    cfg = PIPELINE.job(model=wildcards.model, **choices)
    return {k: cfg[k] for k in sections}


rule prepare_model:
    output:
        config=f"{RESULTS}/models/{{model}}/hf/config.json",
    params:
        cfg=lambda wc: model_job(wc, "model", "seed"),
    localrule: True
    script:
        "../workflow_scripts/prepare_model.py"


# Random weights written out (seeded, one tensor at a time): only for servers that load files
# (transformers serve, DeepSpeed-MII) and the TensorRT-LLM engine build.
rule model_weights:
    output:
        weights=f"{RESULTS}/models/{{model}}/weights/model.safetensors",
    params:
        cfg=lambda wc: model_job(wc, "model", "seed"),
    script:
        "../workflow_scripts/prepare_model.py"


rule gguf:
    output:
        gguf=f"{RESULTS}/models/{{model}}/gguf/{{dtype}}.gguf",
    wildcard_constraints:
        dtype="f32|f16|bf16",
    params:
        cfg=lambda wc: model_job(wc, "model", "seed"),
    script:
        "../workflow_scripts/write_gguf.py"


# Always writes its record: status ok with the engine folder, or not_installed / unsupported / failed
# with the reason (the batch row then carries it).
def trtllm_engine_inputs(wildcards):
    # The engine build needs weights on disk; where TensorRT-LLM is not importable the build only
    # records "not installed", so a 7B weights file (13 GB) is not written just for that.
    files = {"hf": f"{RESULTS}/models/{wildcards.model}/hf/config.json"}
    if importable("tensorrt_llm"):
        files["weights"] = f"{RESULTS}/models/{wildcards.model}/weights/model.safetensors"
    return files


rule trtllm_engine:
    input:
        unpack(trtllm_engine_inputs),
    output:
        record=f"{RESULTS}/{{hardware}}/engines/{{library}}/{{model}}/engine.json",
    wildcard_constraints:
        library="trtllm(-tp[0-9]+)?",  # trtllm-tp<N>: an engine built for N GPUs
    params:
        cfg=lambda wc: model_job(wc, "model", "library", "hardware", "seed", "allow_foreign_hardware",
                                 library=wc.library, hardware=wc.hardware),
    resources:
        **hardware_resources,
    script:
        "../workflow_scripts/build_trtllm_engine.py"
