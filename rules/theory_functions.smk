# Functions of rules/theory.smk (which includes this file); theory_targets is called by
# fine_grain_targets (rules/common.smk), theory_causal and bound_cfgs also by rules/tensor_parallel.smk.


def theory_causal():
    """Count only causally visible attention pairs (``theory.causal`` in the root config; default off, as the paper)."""
    return bool((PIPELINE.root.get("theory") or {}).get("causal", False))


def theory_targets(hardware):
    out = []
    for m in PIPELINE.models:
        out.append(f"{RESULTS}/{hardware}/theory/{m}_ops_b{THEORY_BATCH}_s{THEORY_SEQ}.csv")
        out.append(f"{RESULTS}/{hardware}/theory/{m}_roofline.png")
    out += [f"{RESULTS}/{hardware}/{d}_bound.csv" for d in PIPELINE.datasets]
    return out


def bound_cfgs(hardware, dataset, models):
    """The resolved config of each of ``models`` for the dataset on the hardware (one bound row per model)."""
    return {m: job_config(dataset=dataset, hardware=hardware, model=m) for m in models}


def dataset_bound_cfgs(wildcards):
    """Rule dataset_bound's params: every model of the {dataset}'s table on the {hardware} (table_models,
    rules/report_functions.smk: the matrix's models, then every other model with a batch record), so each
    row of the table has its own model's bound."""
    return bound_cfgs(wildcards.hardware, wildcards.dataset, table_models(wildcards.hardware, wildcards.dataset))
