# Functions of rules/tensor_parallel.smk (which includes this file); tensor_parallel_targets is called by
# all_targets (rules/common.smk).
from inference_eval.theory.parallel import memory_check_for_config  # noqa: E402


def tp_degrees():
    return sorted(set(int(t) for t in (PIPELINE.matrix.get("tensor_parallel") or [1])))


def tp_plan(hardware, dataset):
    """Every library x model x degree of the matrix: its record path, or (when the model's weights do not
    fit the degree's GPUs, the memory check) no record and the check's reason."""
    out = []
    for m in PIPELINE.models:
        for lib in PIPELINE.libraries:
            for t in tp_degrees():
                choice = library_choice(lib, t)
                entry = {"library": lib, "model": m, "dataset": dataset, "hardware": hardware, "tensor_parallel": t}
                fit = memory_check_for_config(PIPELINE.job(hardware=hardware, library=choice, model=m))
                if fit["fits"]:  # a run SLURM killed: its failure record (rules/resources.smk)
                    entry["record"] = record_or_slurm_failure(f"{RESULTS}/{hardware}/batch/{choice}/{m}/{dataset}.json")
                else:
                    entry.update(record=None, status="does_not_fit", reason=fit["reason"])
                out.append(entry)
    return out


def dataset_bound_tp_cfgs(wildcards):
    """Rule dataset_bound_tp's params: the matrix's models only, the models tp_plan runs at degree t (the
    degree-1 bound, rule dataset_bound's, also bounds the other models of the dataset table)."""
    return bound_cfgs(wildcards.hardware, wildcards.dataset, PIPELINE.models)


def tp_bound_path(hardware, dataset, t):
    return f"{RESULTS}/{hardware}/{dataset}_bound.csv" if t == 1 else f"{RESULTS}/{hardware}/{dataset}_bound_tp{t}.csv"


def tensor_parallel_targets(hardware):
    if tp_degrees() == [1]:
        return []
    out = [f"{RESULTS}/{hardware}/tensor_parallel/{d}_scaling.csv" for d in PIPELINE.datasets]
    out.append(f"{RESULTS}/{hardware}/figures/tensor_parallel.png")
    out += [f"{RESULTS}/{hardware}/theory/{m}_ops_b{THEORY_BATCH}_s{THEORY_SEQ}_tp{t}.csv"
            for m in PIPELINE.models for t in tp_degrees() if t > 1]
    return out


def tp_records(wildcards):
    """Input function: the records of the {dataset}'s planned library x model x degree runs that fit."""
    return [e["record"] for e in tp_plan(wildcards.hardware, wildcards.dataset) if e["record"]]


def tp_bounds(wildcards):
    """Input function: the {dataset}'s bound at every degree (degree 1: rule dataset_bound's)."""
    return [tp_bound_path(wildcards.hardware, wildcards.dataset, t) for t in tp_degrees()]
