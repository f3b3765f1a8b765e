# Analytic per-op FLOPs, bytes, intensity and roofline (docs/theory.md), and the end-to-end
# roofline bound of each dataset. CPU-only, cheap: local rules, no GPU resources.
#   results/{hardware}/theory/{model}_ops_b{batch}_s{seq}.csv   Tables 4 and 5 (any b, s)
#   results/{hardware}/theory/{model}_roofline.png             each op at b=8, s=512 under the roof
#   results/{hardware}/{dataset}_bound.csv                     least time any library could take

THEORY_BATCH, THEORY_SEQ = 8, 512  # the paper's Tables 4 and 5


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


rule theory_ops:
    output:
        table=RESULTS + "/{hardware}/theory/{model}_ops_b{batch,[0-9]+}_s{seq,[0-9]+}.csv",
    params:
        cfg=lambda wc: job_params(wc),
        causal=theory_causal(),
    localrule: True
    script:
        "../workflow_scripts/theory_tables.py"


rule theory_roofline:
    input:
        table=RESULTS + f"/{{hardware}}/theory/{{model}}_ops_b{THEORY_BATCH}_s{THEORY_SEQ}.csv",
    output:
        figure=report(RESULTS + "/{hardware}/theory/{model}_roofline.png", caption="../report/theory_roofline.rst",
                      category="Theory", subcategory="{model}", labels={"shows": "roofline (figure)"}),
    params:
        cfg=lambda wc: job_params(wc),
    localrule: True
    script:
        "../workflow_scripts/theory_tables.py"


rule dataset_bound:
    input:
        rows=dataset_rows,
    output:
        bound=RESULTS + "/{hardware}/{dataset}_bound.csv",
    params:
        cfgs=lambda wc: {m: job_config(dataset=wc.dataset, hardware=wc.hardware, model=m) for m in PIPELINE.models},
    localrule: True
    script:
        "../workflow_scripts/dataset_bound.py"
