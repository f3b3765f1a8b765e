# Tensor parallelism (docs/tensor-parallel.md): rows of degree t > 1, their t-GPU bounds and the scaling
# tables. `matrix.tensor_parallel` lists the degrees ([1]: none of this is planned); a degree above
# hardware.gpus stops at parse time. Every file here is CPU work except the batch rows.
#   results/{hw}/batch/{library}-tp{t}/{model}/{dataset}.json     batch rows (rule batch_run; the name carries t)
#   results/{hw}/theory/{model}_ops_b8_s512_tp{t}.csv             one GPU's op table at degree t (with all_reduce)
#   results/{hw}/{dataset}_bound_tp{t}.csv                        the bound on t GPUs
#   results/{hw}/tensor_parallel/{dataset}_scaling.csv            speed-up, scaling efficiency, efficiency vs bound
#   results/{hw}/figures/tensor_parallel.png                      the same as a figure
#   results/{hw}/logs/<rule>/...                                  the jobs' logs
include: "tensor_parallel_functions.smk"


rule theory_ops_tp:
    output:
        table=f"{RESULTS}/{{hardware}}/theory/{{model}}_ops_b{{batch,[0-9]+}}_s{{seq,[0-9]+}}_tp{{degree,[0-9]+}}.csv",
    log:
        f"{RESULTS}/{{hardware}}/logs/theory_ops_tp/{{model}}_ops_b{{batch}}_s{{seq}}_tp{{degree}}.log",
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
        bound=f"{RESULTS}/{{hardware}}/{{dataset}}_bound_tp{{degree,[0-9]+}}.csv",
    log:
        f"{RESULTS}/{{hardware}}/logs/dataset_bound_tp/{{dataset}}_tp{{degree}}.log",
    params:
        cfgs=dataset_bound_tp_cfgs,
    localrule: True
    script:
        "../workflow_scripts/dataset_bound.py"


rule tensor_parallel_table:
    input:
        records=tp_records,
        bounds=tp_bounds,
    output:
        f"{RESULTS}/{{hardware}}/tensor_parallel/{{dataset}}_scaling.csv",
    log:
        f"{RESULTS}/{{hardware}}/logs/tensor_parallel_table/{{dataset}}.log",
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
        report(f"{RESULTS}/{{hardware}}/figures/tensor_parallel.png", caption="../report/tensor_parallel_figure.rst",
               category="Tensor parallel", subcategory="all datasets", labels={"shows": "scaling over GPUs (figure)"}),
    log:
        f"{RESULTS}/{{hardware}}/logs/tensor_parallel_figure.log",
    params:
        datasets=PIPELINE.datasets,
    localrule: True
    script:
        "../workflow_scripts/tensor_parallel_figure.py"
