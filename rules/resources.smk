# Cluster side of the pipeline: per-rule SLURM resources from the Hydra hardware profile, the rules
# that stay on the submitting machine, and how a job that SLURM killed becomes a row (docs/slurm.md).
#
# Rules that run on the job's hardware use `resources: **hardware_resources`. The SLURM executor reads
# slurm_partition, constraint, gpu (or gres), mem_mb, runtime (minutes), cpus_per_task and, when the
# hardware profile names them, slurm_account, qos and slurm_extra. A local run ignores what it does
# not know. An unset key (null in conf/hardware/<hw>.yaml) is left out of the sbatch call.


def _hardware_slurm(wildcards) -> dict:
    hw = PIPELINE.job(hardware=wildcards.hardware)["hardware"]
    return hw.get("slurm") or {}


def _slurm_value(key, default=None, convert=None):
    def resource(wildcards):
        value = _hardware_slurm(wildcards).get(key)
        if value is None or value == "":
            value = default
        if value is None:
            return None  # Snakemake: resource unset
        return convert(value) if convert else value

    return resource


def _job_degree(wildcards) -> int:
    """The tensor-parallel degree of a job whose wildcards name a library (vllm-tp2: 2), else 1."""
    library = dict(wildcards).get("library")
    if not library:
        return 1
    return int(PIPELINE.job(hardware=wildcards.hardware, library=library)["library"].get("tensor_parallel") or 1)


def _slurm_gpus(wildcards):
    # `gres` (e.g. "gpu:a100:1") and `gpu` are exclusive for the plugin: a profile that names gres wins.
    # A job of tensor-parallel degree t asks for at least t GPUs.
    slurm = _hardware_slurm(wildcards)
    if slurm.get("gres"):
        return None
    gpus = int(slurm.get("gpus") or 0)
    return max(gpus, _job_degree(wildcards)) if gpus else None


def _slurm_gres(wildcards):
    # "gpu:h200:1" for a job of degree 2 becomes "gpu:h200:2"
    gres = _hardware_slurm(wildcards).get("gres")
    if gres is None or gres == "":
        return None
    head, sep, count = str(gres).rpartition(":")
    degree = _job_degree(wildcards)
    if sep and count.isdigit() and int(count) < degree:
        return f"{head}:{degree}"
    return str(gres)


hardware_resources = dict(
    slurm_partition=_slurm_value("partition"),
    constraint=_slurm_value("constraint", convert=str),
    gpu=_slurm_gpus,
    gres=_slurm_gres,
    gpu_model=_slurm_value("gpu_model", convert=str),
    mem_mb=_slurm_value("mem_mb", 4000, int),
    cpus_per_task=_slurm_value("cpus_per_task", 1, int),
    runtime=_slurm_value("runtime_min", 60, int),
    slurm_account=_slurm_value("account", convert=str),
    qos=_slurm_value("qos", convert=str),
    slurm_extra=_slurm_value("extra", convert=str),
)

# CPU-only rules (dataset building, theory, tables, figures, model configs) run on the submitting
# machine under the SLURM executor. Rule files mark them with `localrule: True`; this list names them
# for `localrules: *CPU_LOCALRULES` where a rule cannot carry the flag.
CPU_LOCALRULES = [
    "build_dataset", "dataset_figures",          # rules/datasets.smk
    "prepare_model",                             # rules/models.smk (config + tokenizer files only)
    "theory_ops", "theory_roofline", "dataset_bound",  # rules/theory.smk
    "dataset_table", "throughput_figure",        # rules/report.smk
    "serving_figure",                            # rules/serving.smk
    "fit_coefficients", "module_figures",        # rules/profiling.smk
    "results_summary",                           # rules/report_pages.smk (and its report_html_<kind> rules)
    "predict_modules", "predict_batch", "validate_predictions", "predictions",  # rules/prediction.smk
]


# ---- Jobs that SLURM killed (time limit, memory): their reason becomes the row's status. ----
# After a run where SLURM killed jobs, `onerror` below writes a failure record next to each missing
# output: `<output without suffix>.slurm.json`, in the run-record format (status `oom` or `timeout`,
# reason naming the SLURM job, state and limit). Tables take it in place of the missing record
# (`record_or_slurm_failure`), so resubmitting the same command writes the tables with those rows and
# reruns only outputs that are missing without a known kill. To try killed jobs again (e.g. after
# raising hardware.slurm.runtime_min or mem_mb), delete their .slurm.json files or set the root config
# key `slurm_retry_killed=true`.
from inference_eval import slurm_failures


def record_or_slurm_failure(path, first_output=None):
    """The output at ``path``, or the SLURM failure record of the job that makes it while the output is
    missing (beside that job's first output: ``first_output``, default ``path``)."""
    if PIPELINE.root.get("slurm_retry_killed", False):
        return path
    return slurm_failures.stand_in(path, first_output)


onerror:
    try:
        for failure_path in slurm_failures.collect(log):
            print(f"SLURM killed a job: its failure record is {failure_path}; "
                  "run the same command again to write the tables with it (docs/slurm.md)")
    except Exception as _err:  # never mask the workflow's own error
        print(f"could not collect SLURM kill reasons: {_err}")
