# Config composition (Hydra), validation, the experiment matrix and input functions.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from inference_eval.config import PipelineConfig, ConfigError  # noqa: E402
from inference_eval.tensor_parallel import base_library, library_choice  # noqa: E402

try:
    PIPELINE = PipelineConfig.from_snakemake(config)
except ConfigError as _err:
    raise WorkflowError(f"configuration error: {_err}")

RESULTS = PIPELINE.root["results_dir"]
HARDWARE_CHOICES = "|".join(["cpu", "3090", "4090", "a100", "h100", "h200"])
LIBRARIES = "transformers|vllm|llamacpp|mii|trtllm"
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


def importable(module):
    """Whether a library is importable where Snakemake plans the DAG. Weights files (13 GB for a 7B
    model) are planned only for libraries that can use them; a missing one records its reason."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def model_files(wildcards):
    """Inputs a batch or serving job of {library} needs from the models rules (rules/models.smk)."""
    m, lib = wildcards.model, base_library(wildcards.library)  # vllm-tp2 needs what vllm needs
    files = {"hf": f"{RESULTS}/models/{m}/hf/config.json"}
    if lib == "llamacpp":
        dtype = PIPELINE.job(library="llamacpp", model=m)["library"]["gguf_dtype"]
        files["gguf"] = f"{RESULTS}/models/{m}/gguf/{dtype}.gguf"
    if lib == "mii" and importable("mii"):  # mii.pipeline loads a model folder with weights
        files["weights"] = f"{RESULTS}/models/{m}/weights/model.safetensors"
    if lib == "trtllm":  # an engine per degree: engines/trtllm/ (1), engines/trtllm-tp<N>/
        files["engine"] = f"{RESULTS}/{wildcards.hardware}/engines/{wildcards.library}/{m}/engine.json"
    return files


# Timed jobs (batch, serving, module profiling) claim every core the run was given, so Snakemake
# never runs two measurements side by side; cheap jobs still run in parallel. Their scripts cap the
# OMP_NUM_THREADS Snakemake sets from this at the real cores and drop the BLAS thread variables
# (hardware.cap_thread_env).
# Unset under a cluster executor, where cpus_per_task sizes each job instead.
MEASURE_THREADS = max(1, int(workflow.resource_settings.cores or 1))
