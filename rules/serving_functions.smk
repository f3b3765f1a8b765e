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


def recorded_serving_pairs(hardware, dataset, failures=True):
    """``[(library, model), ...]`` of the sweep CSVs (``<library>_<model>_<dataset>.csv`` or its SLURM
    failure record) that exist under ``results/<hardware>/serving`` for the registered libraries, by name.
    A model a campaign served for only some libraries (Llama-2-13B on l2s) thus joins the figure and the
    summary without planning its other libraries' sweeps. ``failures=False``: sweeps with a CSV only."""
    root = Path(f"{RESULTS}/{hardware}/serving")
    pairs = []
    for library in LIBRARY_REGISTRY:
        for suffix in (".csv", slurm_failures.SUFFIX) if failures else (".csv",):
            for path in sorted(root.glob(f"{library}_*_{dataset}{suffix}")):
                model = path.name[len(library) + 1: -len(f"_{dataset}{suffix}")]
                if re.fullmatch(r"[A-Za-z0-9.\-]+", model) and (library, model) not in pairs:
                    pairs.append((library, model))
    return pairs


def serving_sweep_csvs(hardware, dataset, failures=True):
    """The sweeps of one dataset: every matrix library x matrix model (a planned run: missing, it is run),
    then every other recorded (library, model) sweep (recorded_serving_pairs), which is only read."""
    planned = [(lib, m) for m in PIPELINE.models for lib in PIPELINE.libraries]
    pairs = planned + [p for p in recorded_serving_pairs(hardware, dataset, failures) if p not in planned]
    return [serving_csv(hardware, lib, m, dataset) for lib, m in pairs]


def serving_sweeps(wildcards):
    """The {dataset}'s sweeps (serving_sweep_csvs); a sweep SLURM killed is its failure record
    (rules/resources.smk), named under the plot."""
    return [record_or_slurm_failure(p) for p in serving_sweep_csvs(wildcards.hardware, wildcards.dataset)]
