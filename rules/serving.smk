# Online serving: one sweep of request rates per (library, model, dataset) against the library's own
# OpenAI-compatible server on loopback, then the serving curves per dataset (the paper's Figs 1, 4, 5).
# A sweep's log is sweep.log in its run folder, beside the server's server.log; the figure's is
# results/{hardware}/logs/serving_figure/{dataset}.log.
include: "serving_functions.smk"


rule serving_sweep:
    input:
        unpack(serving_model_files),
        unpack(library_env),
        rows=dataset_rows,
    output:
        csv=f"{RESULTS}/{{hardware}}/serving/{{library}}_{{model}}_{{dataset}}.csv",
        record=f"{RESULTS}/{{hardware}}/serving/runs/{{library}}_{{model}}_{{dataset}}/record.json",
    log:
        f"{RESULTS}/{{hardware}}/serving/runs/{{library}}_{{model}}_{{dataset}}/sweep.log",
    params:
        cfg=lambda wc: PIPELINE.job(dataset=wc.dataset, library=wc.library, model=wc.model,
                                    hardware=wc.hardware, scenario="serving"),
    threads: MEASURE_THREADS
    resources:
        **hardware_resources,
    script:
        "../workflow_scripts/run_serving.py"


rule serving_figure:
    input:
        sweeps=serving_sweeps,
    output:
        report(f"{RESULTS}/{{hardware}}/figures/serving_{{dataset}}.png", caption="../report/serving_figure.rst",
               category="Serving", subcategory="{dataset}", labels={"shows": "serving curves (figure)"}),
    log:
        f"{RESULTS}/{{hardware}}/logs/serving_figure/{{dataset}}.log",
    localrule: True
    script:
        "../workflow_scripts/serving_figures.py"
