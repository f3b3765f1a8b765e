# Analytic per-op FLOPs, bytes, intensity and roofline (docs/theory.md), and the end-to-end
# roofline bound of each dataset. CPU-only, cheap: local rules, no GPU resources.
#   results/{hardware}/theory/{model}_ops_b{batch}_s{seq}.csv   Tables 4 and 5 (any b, s)
#   results/{hardware}/theory/{model}_roofline.png             each op at b=8, s=512 under the roof
#   results/{hardware}/{dataset}_bound.csv                     least time any library could take, a row per
#                                                               model of the dataset table (table_models)
#   results/{hardware}/logs/<rule>/...                          the jobs' logs

THEORY_BATCH, THEORY_SEQ = 8, 512  # the paper's Tables 4 and 5

include: "theory_functions.smk"


rule theory_ops:
    output:
        table=f"{RESULTS}/{{hardware}}/theory/{{model}}_ops_b{{batch,[0-9]+}}_s{{seq,[0-9]+}}.csv",
    log:
        f"{RESULTS}/{{hardware}}/logs/theory_ops/{{model}}_ops_b{{batch}}_s{{seq}}.log",
    params:
        cfg=lambda wc: job_params(wc),
        causal=theory_causal(),
    localrule: True
    script:
        "../workflow_scripts/theory_tables.py"


rule theory_roofline:
    input:
        table=f"{RESULTS}/{{hardware}}/theory/{{model}}_ops_b{THEORY_BATCH}_s{THEORY_SEQ}.csv",
    output:
        figure=report(f"{RESULTS}/{{hardware}}/theory/{{model}}_roofline.png", caption="../report/theory_roofline.rst",
                      category="Theory", subcategory="{model}", labels={"shows": "roofline (figure)"}),
    log:
        f"{RESULTS}/{{hardware}}/logs/theory_roofline/{{model}}.log",
    params:
        cfg=lambda wc: job_params(wc),
    localrule: True
    script:
        "../workflow_scripts/theory_tables.py"


rule dataset_bound:
    input:
        rows=dataset_rows,
    output:
        bound=f"{RESULTS}/{{hardware}}/{{dataset}}_bound.csv",
    log:
        f"{RESULTS}/{{hardware}}/logs/dataset_bound/{{dataset}}.log",
    params:
        cfgs=dataset_bound_cfgs,
    localrule: True
    script:
        "../workflow_scripts/dataset_bound.py"
