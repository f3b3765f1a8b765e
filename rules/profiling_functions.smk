# Variants and functions of rules/profiling.smk (which includes this file); module_targets is called by
# fine_grain_targets (rules/common.smk), profiled_variants and PROFILED_VARIANTS also by
# rules/prediction.smk and rules/report_pages.smk.
from inference_eval.profiling import sweep as profiling_sweep  # noqa: E402

VARIANTS = {v.name: v for lib in LIBRARY_REGISTRY.values() for v in lib.variants}
PROFILED_VARIANTS = "|".join(re.escape(name) for name in VARIANTS) or "(?!)"  # (?!): none matches
PROFILED_STAGES = ("prefill", "decode")


def profiling_settings(hardware):
    try:
        return profiling_sweep.settings(PIPELINE.job(hardware=hardware))
    except ValueError as err:
        raise WorkflowError(f"configuration error: {err}")


def profiling_model(hardware):
    return profiling_settings(hardware)["model"]


def profiled_variants(hardware):
    """The configured variants whose library is in the experiment matrix."""
    libs = set(PIPELINE.libraries)
    return [v for v in profiling_settings(hardware)["libraries"] if VARIANTS[v].library in libs]


def profiling_job(wc):
    return PIPELINE.job(model=profiling_model(wc.hardware), hardware=wc.hardware, library=VARIANTS[wc.variant].library)


def module_files(hardware, variant):
    base = f"{RESULTS}/{hardware}/modules/{variant}"
    return [f"{base}_{stage}_{sweep}.csv" for stage in PROFILED_STAGES for sweep in profiling_sweep.SWEEPS]


def profiled_or_failure(hardware, variant, path):
    """A profile_modules output, or the SLURM failure record of the job that makes it (beside its first
    output, the prefill seq table): the coefficients and figures then show that library's reason."""
    return record_or_slurm_failure(path, module_files(hardware, variant)[0])


def points_file(hardware, variant):
    return profiled_or_failure(hardware, variant, f"{RESULTS}/{hardware}/modules/{variant}_points.csv")


def module_targets(hardware):
    out = []
    for v in profiled_variants(hardware):
        out += module_files(hardware, v)
    if out:
        out += [f"{RESULTS}/{hardware}/coefficients.csv",
                f"{RESULTS}/{hardware}/figures/module_shares.png",
                f"{RESULTS}/{hardware}/figures/time_model_fit.png"]
    return out


def profiling_inputs(wc):
    """What the variant's runner needs from the models rules (its registry entry's model_files)."""
    v = VARIANTS[wc.variant]
    return artifact_files(v.model_files, v.library, profiling_model(wc.hardware), wc.hardware)


def profiled_points(wildcards):
    """Input function: every profiled variant's points table on the {hardware} (or its failure record)."""
    return [points_file(wildcards.hardware, v) for v in profiled_variants(wildcards.hardware)]


def profiled_modules(wildcards):
    """Input function: every profiled variant's four module tables on the {hardware} (or failure records)."""
    return [profiled_or_failure(wildcards.hardware, v, p) for v in profiled_variants(wildcards.hardware)
            for p in module_files(wildcards.hardware, v)]
