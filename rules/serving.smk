# Online serving: one sweep of request rates per (library, model, dataset) against the library's own
# OpenAI-compatible server on loopback, then the serving curves per dataset (the paper's Figs 1, 4, 5).


def serving_datasets():
    """Datasets served: `scenario.datasets` of the serving config when set, else the matrix's."""
    listed = PIPELINE.job(scenario="serving")["scenario"].get("datasets")
    return list(listed) if listed else PIPELINE.datasets


def serving_csv(hardware, library, model, dataset):
    return f"{RESULTS}/{hardware}/serving/{library}_{model}_{dataset}.csv"


def serving_targets(hardware):
    out = []
    for d in serving_datasets():
        out += [serving_csv(hardware, lib, m, d) for lib in PIPELINE.libraries for m in PIPELINE.models]
        out.append(f"{RESULTS}/{hardware}/figures/serving_{d}.png")
    return out


def serving_model_files(wildcards):
    """What the library's server needs from the models rules (its registry entry's server.model_files,
    common.smk's artifact_files). A library without a server still gets its sweep job: it writes one
    `unsupported` row with the reason, from the HF folder alone."""
    lib = LIBRARY_REGISTRY[base_library(wildcards.library)]
    artifacts = lib.server.model_files if lib.server else ("hf",)
    return artifact_files(artifacts, wildcards.library, wildcards.model, wildcards.hardware)


rule serving_sweep:
    input:
        unpack(serving_model_files),
        unpack(library_env),
        rows=dataset_rows,
    output:
        csv=f"{RESULTS}/{{hardware}}/serving/{{library}}_{{model}}_{{dataset}}.csv",
        record=f"{RESULTS}/{{hardware}}/serving/runs/{{library}}_{{model}}_{{dataset}}/record.json",
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
        # a sweep SLURM killed is its failure record (rules/resources.smk), named under the plot
        sweeps=lambda wc: [record_or_slurm_failure(serving_csv(wc.hardware, lib, m, wc.dataset))
                           for lib in PIPELINE.libraries for m in PIPELINE.models],
    output:
        report(f"{RESULTS}/{{hardware}}/figures/serving_{{dataset}}.png", caption="../report/serving_figure.rst",
               category="Serving", subcategory="{dataset}", labels={"shows": "serving curves (figure)"}),
    localrule: True
    script:
        "../workflow_scripts/serving_figures.py"
