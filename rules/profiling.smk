# Measured per-op time (and DRAM bytes on a GPU) of one prefill and one decode step, the b/s sweeps,
# the fitted time model and its figures (docs/theory.md).
#   results/{hardware}/modules/{variant}_{stage}_{sweep}.csv   per op: time, share, theory, roofline
#   results/{hardware}/modules/{variant}_points.csv            per point: decoder-layer time (fit input)
#   results/{hardware}/modules/{variant}.json, {variant}.log   the profile's record and its job's log
#   results/{hardware}/coefficients.csv                        time-model coefficients, r2, held-out MAPE
#   results/{hardware}/figures/module_shares.png, time_model_fit.png
#   results/{hardware}/logs/fit_coefficients.log, module_figures.log   the fit's and the figures' logs
# {variant}: a profiled variant of the library registry (module_profiling of conf/library/*.yaml:
# transformers-eager | transformers-sdpa | vllm). Model, sweeps, repeats: the hardware kind's defaults
# in inference_eval.profiling.sweep, overridden by a `profiling:` config block.
include: "profiling_functions.smk"


rule profile_modules:
    input:
        unpack(profiling_inputs),
    output:
        prefill_seq=f"{RESULTS}/{{hardware}}/modules/{{variant}}_prefill_seq.csv",
        prefill_batch=f"{RESULTS}/{{hardware}}/modules/{{variant}}_prefill_batch.csv",
        decode_seq=f"{RESULTS}/{{hardware}}/modules/{{variant}}_decode_seq.csv",
        decode_batch=f"{RESULTS}/{{hardware}}/modules/{{variant}}_decode_batch.csv",
        points=f"{RESULTS}/{{hardware}}/modules/{{variant}}_points.csv",
        record=f"{RESULTS}/{{hardware}}/modules/{{variant}}.json",
    log:
        f"{RESULTS}/{{hardware}}/modules/{{variant}}.log",
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
        points=profiled_points,
        modules=profiled_modules,
    output:
        coefficients=f"{RESULTS}/{{hardware}}/coefficients.csv",
        predictions=f"{RESULTS}/{{hardware}}/modules/time_model_points.csv",
    log:
        f"{RESULTS}/{{hardware}}/logs/fit_coefficients.log",
    localrule: True
    script:
        "../workflow_scripts/fit_coefficients.py"


rule module_figures:
    input:
        modules=profiled_modules,
        points=profiled_points,
        coefficients=f"{RESULTS}/{{hardware}}/coefficients.csv",
    output:
        shares=report(f"{RESULTS}/{{hardware}}/figures/module_shares.png", caption="../report/module_shares.rst",
                      category="Modules", subcategory="all libraries", labels={"shows": "per-op time shares (figure)"}),
        fit=report(f"{RESULTS}/{{hardware}}/figures/time_model_fit.png", caption="../report/time_model_fit.rst",
                   category="Time model", subcategory="fit", labels={"shows": "measured vs predicted (figure)"}),
    log:
        f"{RESULTS}/{{hardware}}/logs/module_figures.log",
    localrule: True
    script:
        "../workflow_scripts/module_figures.py"
