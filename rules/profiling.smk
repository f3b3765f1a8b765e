# Measured per-op time (and DRAM bytes on a GPU) of one prefill and one decode step, the b/s sweeps,
# the fitted time model and its figures (docs/theory.md).
#   results/{hardware}/modules/{variant}_{stage}_{sweep}.csv   per op: time, share, theory, roofline
#   results/{hardware}/modules/{variant}_points.csv            per point: decoder-layer time (fit input)
#   results/{hardware}/coefficients.csv                        time-model coefficients, r2, held-out MAPE
#   results/{hardware}/figures/module_shares.png, time_model_fit.png
# {variant}: a profiled variant of the library registry (module_profiling of conf/library/*.yaml:
# transformers-eager | transformers-sdpa | vllm). Model, sweeps, repeats: the hardware kind's defaults
# in inference_eval.profiling.sweep, overridden by a `profiling:` config block.

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


rule profile_modules:
    input:
        unpack(profiling_inputs),
    output:
        prefill_seq=RESULTS + "/{hardware}/modules/{variant}_prefill_seq.csv",
        prefill_batch=RESULTS + "/{hardware}/modules/{variant}_prefill_batch.csv",
        decode_seq=RESULTS + "/{hardware}/modules/{variant}_decode_seq.csv",
        decode_batch=RESULTS + "/{hardware}/modules/{variant}_decode_batch.csv",
        points=RESULTS + "/{hardware}/modules/{variant}_points.csv",
        record=RESULTS + "/{hardware}/modules/{variant}.json",
    wildcard_constraints:
        variant=PROFILED_VARIANTS,
    params:
        cfg=profiling_job,
    threads: MEASURE_THREADS
    resources:
        **hardware_resources,
    script:
        "../workflow_scripts/profile_modules.py"


rule fit_coefficients:
    input:
        points=lambda wc: [points_file(wc.hardware, v) for v in profiled_variants(wc.hardware)],
        modules=lambda wc: [profiled_or_failure(wc.hardware, v, p) for v in profiled_variants(wc.hardware)
                            for p in module_files(wc.hardware, v)],
    output:
        coefficients=RESULTS + "/{hardware}/coefficients.csv",
        predictions=RESULTS + "/{hardware}/modules/time_model_points.csv",
    localrule: True
    script:
        "../workflow_scripts/fit_coefficients.py"


rule module_figures:
    input:
        modules=lambda wc: [profiled_or_failure(wc.hardware, v, p) for v in profiled_variants(wc.hardware)
                            for p in module_files(wc.hardware, v)],
        points=lambda wc: [points_file(wc.hardware, v) for v in profiled_variants(wc.hardware)],
        coefficients=RESULTS + "/{hardware}/coefficients.csv",
    output:
        shares=report(RESULTS + "/{hardware}/figures/module_shares.png", caption="../report/module_shares.rst",
                      category="Modules", subcategory="all libraries", labels={"shows": "per-op time shares (figure)"}),
        fit=report(RESULTS + "/{hardware}/figures/time_model_fit.png", caption="../report/time_model_fit.rst",
                   category="Time model", subcategory="fit", labels={"shows": "measured vs predicted (figure)"}),
    localrule: True
    script:
        "../workflow_scripts/module_figures.py"
