# Tensor parallelism (docs/tensor-parallel.md): rows of degree t > 1, their t-GPU bounds and the scaling
# tables. `matrix.tensor_parallel` lists the degrees ([1]: none of this is planned); a degree above
# hardware.gpus stops at parse time. Every file here is CPU work except the batch rows.
#   results/{hw}/batch/{library}-tp{t}/{model}/{dataset}.json     batch rows (rule batch_run; the name carries t)
#   results/{hw}/theory/{model}_ops_b8_s512_tp{t}.csv             one GPU's op table at degree t (with all_reduce)
#   results/{hw}/{dataset}_bound_tp{t}.csv                        the bound on t GPUs
#   results/{hw}/tensor_parallel/{dataset}_scaling.csv            speed-up, scaling efficiency, efficiency vs bound
#   results/{hw}/figures/tensor_parallel.png                      the same as a figure
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


rule theory_ops_tp:
    output:
        table=RESULTS + "/{hardware}/theory/{model}_ops_b{batch,[0-9]+}_s{seq,[0-9]+}_tp{degree,[0-9]+}.csv",
    params:
        cfg=lambda wc: job_params(wc),
        causal=theory_causal(),
    localrule: True
    script:
        "../workflow_scripts/theory_tables.py"


rule dataset_bound_tp:
    input:
        rows=dataset_rows,
    output:
        bound=RESULTS + "/{hardware}/{dataset}_bound_tp{degree,[0-9]+}.csv",
    params:
        cfgs=lambda wc: {m: job_config(dataset=wc.dataset, hardware=wc.hardware, model=m) for m in PIPELINE.models},
    localrule: True
    script:
        "../workflow_scripts/dataset_bound.py"


rule tensor_parallel_table:
    input:
        records=lambda wc: [e["record"] for e in tp_plan(wc.hardware, wc.dataset) if e["record"]],
        bounds=lambda wc: [tp_bound_path(wc.hardware, wc.dataset, t) for t in tp_degrees()],
    output:
        f"{RESULTS}/{{hardware}}/tensor_parallel/{{dataset}}_scaling.csv",
    params:
        planned=lambda wc: tp_plan(wc.hardware, wc.dataset),
        degrees=tp_degrees(),
    localrule: True
    script:
        "../workflow_scripts/tensor_parallel_table.py"


rule tensor_parallel_figure:
    input:
        tables=expand(f"{RESULTS}/{{{{hardware}}}}/tensor_parallel/{{dataset}}_scaling.csv", dataset=PIPELINE.datasets),
    output:
        f"{RESULTS}/{{hardware}}/figures/tensor_parallel.png",
    params:
        datasets=PIPELINE.datasets,
    localrule: True
    script:
        "../workflow_scripts/tensor_parallel_figure.py"
