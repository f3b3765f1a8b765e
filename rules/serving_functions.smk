# Functions of rules/serving.smk (which includes this file); serving_targets is called by all_targets
# (rules/common.smk), serving_csv and serving_datasets also by rules/report_pages.smk.


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


def serving_sweeps(wildcards):
    """Every matrix library x model's sweep of the {dataset}; a sweep SLURM killed is its failure record
    (rules/resources.smk), named under the plot."""
    return [record_or_slurm_failure(serving_csv(wildcards.hardware, lib, m, wildcards.dataset))
            for lib in PIPELINE.libraries for m in PIPELINE.models]
