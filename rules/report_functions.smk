# Functions of rules/report.smk (which includes this file); table_models is also called by
# rules/theory_functions.smk (the bound rows of every model of a dataset table).


def table_models(hardware, dataset):
    """The models of ``<hardware>/<dataset>_table.csv``: the matrix's models (``matrix.models``, else the
    selected ``model``), then every other model with a batch record (or a SLURM failure record) of that
    dataset on that hardware, by name. A model run for only some libraries (a second model a campaign
    added, a run by hand) thus joins the table as its own group without planning its other libraries."""
    models = list(PIPELINE.models)
    return models + [m for m in sorted(recorded_pairs(hardware, dataset)) if m not in models]


def recorded_pairs(hardware, dataset):
    """``{model: [library, ...]}`` of the batch records (``<library>/<model>/<dataset>.json`` or its SLURM
    failure record) that exist under ``results/<hardware>/batch`` for the registered libraries (not their
    tensor-parallel ``-tp<N>`` rows, which have their own tables: rules/tensor_parallel.smk)."""
    pairs = {}
    root = Path(f"{RESULTS}/{hardware}/batch")
    for library in LIBRARY_REGISTRY:
        for name in (f"{dataset}.json", f"{dataset}{slurm_failures.SUFFIX}"):
            for path in sorted(root.glob(f"{library}/*/{name}")):
                model = path.parent.name
                if re.fullmatch(r"[A-Za-z0-9.\-]+", model) and library not in pairs.get(model, []):
                    pairs.setdefault(model, []).append(library)
    return pairs


def batch_records(wildcards):
    """The records of one dataset table, model by model (table_models): a matrix model's rows are every
    matrix library (a planned run: missing, it is run; a job SLURM killed is its failure record's row,
    rules/resources.smk) and any other library with a record; another model's rows are only the records
    that exist. Found records are still the batch rule's outputs: like every record, one whose dataset
    or model files are newer is planned again (scripts/device/report.sh allows only the report rules, so
    there such a run stops with Snakemake's error instead of starting)."""
    hw, dataset = wildcards.hardware, wildcards.dataset
    recorded = recorded_pairs(hw, dataset)
    out = []
    for m in table_models(hw, dataset):
        libs = PIPELINE.libraries if m in PIPELINE.models else []
        libs = libs + [lib for lib in recorded.get(m, []) if lib not in libs]
        out += [record_or_slurm_failure(f"{RESULTS}/{hw}/batch/{lib}/{m}/{dataset}.json") for lib in libs]
    return out
