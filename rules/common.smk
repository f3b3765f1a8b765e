# Config composition (Hydra), validation, the experiment matrix and input functions.
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from inference_eval import libraries  # noqa: E402
from inference_eval.config import PipelineConfig, ConfigError  # noqa: E402
from inference_eval.tensor_parallel import base_library, library_choice  # noqa: E402

try:
    PIPELINE = PipelineConfig.from_snakemake(config)
    # The library registry (conf/library/*.yaml and conf_path folders): every library's rules,
    # artifacts, server and profiled variants derive from it (inference_eval.libraries).
    LIBRARY_REGISTRY = libraries.registry(PIPELINE.roots)
except (ConfigError, libraries.LibraryConfigError) as _err:
    raise WorkflowError(f"configuration error: {_err}")

RESULTS = PIPELINE.root["results_dir"]
HARDWARE_CHOICES = "|".join(["cpu", "3090", "4090", "a100", "h100", "h200"])
LIBRARIES = "|".join(re.escape(name) for name in LIBRARY_REGISTRY)
DATASETS = "s2s|s2l|s16k|l2s"


wildcard_constraints:
    hardware=HARDWARE_CHOICES,
    library=f"(?:{LIBRARIES})(?:-tp[0-9]+)?",  # <library>-tp<N>: degree N (inference_eval.tensor_parallel)
    dataset=DATASETS,
    model=r"[A-Za-z0-9.\-]+",


def job_config(**choices):
    """Resolved config for one job, passed to its script as a parameter (a changed config reruns it)."""
    return PIPELINE.job(**choices)


def job_params(wildcards, **fixed):
    choices = {k: v for k, v in dict(wildcards).items() if k in ("dataset", "library", "model", "hardware", "scenario")}
    choices.update(fixed)
    return job_config(**choices)


def dataset_rows(wildcards):
    return f"{RESULTS}/datasets/{PIPELINE.dataset_option(wildcards.dataset)}/rows.jsonl"


def matrix_models():
    return PIPELINE.models


def all_targets(hardware):
    out = []
    scen = PIPELINE.scenarios
    for d in PIPELINE.datasets:
        out.append(f"{RESULTS}/datasets/{PIPELINE.dataset_option(d)}/manifest.json")
        if "batch" in scen:
            out.append(f"{RESULTS}/{hardware}/{d}_table.csv")
    out.append(f"{RESULTS}/datasets/figures/{PIPELINE.matrix['dataset_variant']}_lengths.png")
    if "batch" in scen:
        out.append(f"{RESULTS}/{hardware}/figures/throughput.png")
    if "serving" in scen:
        out += serving_targets(hardware)
    if PIPELINE.matrix.get("fine_grain", True):
        out += fine_grain_targets(hardware)
    out += tensor_parallel_targets(hardware)  # rules/tensor_parallel.smk; none at matrix.tensor_parallel [1]
    return out


def fine_grain_targets(hardware):
    # theory_targets: rules/theory.smk; module_targets: rules/profiling.smk
    return theory_targets(hardware) + module_targets(hardware)


def importable(module, library=None, hardware=None):
    """Whether a library is importable where Snakemake plans the DAG (with `library`: in that library's
    environment, inference_eval.environments). Weights files (13 GB for a 7B model) are planned only for
    libraries that can use them; a missing one records its reason."""
    import importlib.util

    if library is not None:
        from inference_eval.environments import library_has_module

        return library_has_module(PIPELINE.job(library=library, hardware=hardware or PIPELINE.hardware), module)
    return importlib.util.find_spec(module) is not None


def library_env(wildcards):
    """The env.json of the library's environment (rules/envs.smk) when its `library.env` names a lock, so
    its batch and serving jobs wait for the build and rerun when the lock changes; none otherwise."""
    from inference_eval.environments import status_path

    try:
        path = status_path(PIPELINE.job(library=wildcards.library, hardware=wildcards.hardware))
    except ValueError as exc:
        raise WorkflowError(f"configuration error: {exc}")
    return {"env": str(path)} if path else {}


def artifact_files(artifacts, library, model, hardware):
    """The models rules' outputs (rules/models.smk) for a list of registry artifacts, as named inputs
    (hf, weights, gguf, engine: what ModelFiles.from_rule_inputs reads). The written-out weights are
    planned only where the library's module is importable; a missing one records its reason."""
    lib = LIBRARY_REGISTRY[base_library(library)]  # vllm-tp2 needs what vllm needs
    files = {}
    for artifact in artifacts:
        if artifact == "hf":
            files["hf"] = f"{RESULTS}/models/{model}/hf/config.json"
        elif artifact == "gguf":
            dtype = PIPELINE.job(library=library, model=model)["library"].get("gguf_dtype") or "f16"
            files["gguf"] = f"{RESULTS}/models/{model}/gguf/{dtype}.gguf"
        elif artifact == "safetensors":
            if not lib.module or importable(lib.module, library, hardware):
                files["weights"] = f"{RESULTS}/models/{model}/weights/model.safetensors"
        elif artifact == "trt_engine":
            files["engine"] = f"{RESULTS}/{hardware}/engines/{library}/{model}/engine.json"  # one per degree: trtllm-tp<N>
        else:
            raise WorkflowError(f"{lib.path}: unknown artifact {artifact!r}; valid: {', '.join(libraries.ARTIFACTS)}")
    return files


def model_files(wildcards):
    """Inputs a batch job of {library} needs from the models rules: its registry entry's model_files."""
    lib = LIBRARY_REGISTRY[base_library(wildcards.library)]
    return artifact_files(lib.model_files, wildcards.library, wildcards.model, wildcards.hardware)


# Timed jobs (batch, serving, module profiling) claim every core the run was given, so Snakemake
# never runs two measurements side by side; cheap jobs still run in parallel. Their scripts cap the
# OMP_NUM_THREADS Snakemake sets from this at the real cores and drop the BLAS thread variables
# (hardware.cap_thread_env).
# Unset under a cluster executor, where cpus_per_task sizes each job instead.
MEASURE_THREADS = max(1, int(workflow.resource_settings.cores or 1))
