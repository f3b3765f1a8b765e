# Functions of rules/theory.smk (which includes this file); theory_targets is called by
# fine_grain_targets (rules/common.smk), theory_causal also by rules/tensor_parallel.smk.


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


def dataset_bound_cfgs(wildcards):
    """The resolved config of every matrix model for the {dataset} on the {hardware} (rules dataset_bound
    and dataset_bound_tp: one bound row per model)."""
    return {m: job_config(dataset=wildcards.dataset, hardware=wildcards.hardware, model=m) for m in PIPELINE.models}
