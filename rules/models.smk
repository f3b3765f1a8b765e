# Model preparation: HF config folders (no weights), random weights where a server needs files,
# GGUF for llama.cpp, TensorRT-LLM engine builds. Paths are the ones `model_files()` (common.smk) names.
# Logs: results/models/logs/<rule>/<model>[_<dtype>].log; the engine build's beside its hardware's
# results, results/<hw>/logs/trtllm_engine/<library>_<model>.log.
include: "models_functions.smk"


rule prepare_model:
    output:
        config=f"{RESULTS}/models/{{model}}/hf/config.json",
    log:
        f"{RESULTS}/models/logs/prepare_model/{{model}}.log",
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
    log:
        f"{RESULTS}/models/logs/model_weights/{{model}}.log",
    params:
        cfg=lambda wc: model_job(wc, "model", "seed"),
    script:
        "../workflow_scripts/prepare_model.py"


rule gguf:
    output:
        gguf=f"{RESULTS}/models/{{model}}/gguf/{{dtype}}.gguf",
    log:
        f"{RESULTS}/models/logs/gguf/{{model}}_{{dtype}}.log",
    wildcard_constraints:
        dtype="f32|f16|bf16",
    params:
        cfg=lambda wc: model_job(wc, "model", "seed"),
    script:
        "../workflow_scripts/write_gguf.py"


# Always writes its record: status ok with the engine folder, or not_installed / unsupported / failed
# with the reason (the batch row then carries it).
rule trtllm_engine:
    input:
        unpack(trtllm_engine_inputs),
    output:
        record=f"{RESULTS}/{{hardware}}/engines/{{library}}/{{model}}/engine.json",
    log:
        f"{RESULTS}/{{hardware}}/logs/trtllm_engine/{{library}}_{{model}}.log",
    wildcard_constraints:
        library="trtllm(-tp[0-9]+)?",  # trtllm-tp<N>: an engine built for N GPUs
    params:
        cfg=lambda wc: model_job(wc, "model", "library", "hardware", "seed", "allow_foreign_hardware",
                                 library=wc.library, hardware=wc.hardware),
    resources:
        **hardware_resources,
    script:
        "../workflow_scripts/build_trtllm_engine.py"
