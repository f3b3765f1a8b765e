# The four task-shaped datasets (s2s, s2l, s16k, l2s), real or synthetic, and their length figures.
#   results/datasets/<member>/rows.jsonl + manifest.json     member: s2s | s2s-synthetic | ... | l2s-synthetic
#   results/datasets/figures/<variant>_lengths.png, results/datasets/<variant>_summary.csv   variant: synthetic | real
#   results/datasets/logs/<rule>/<member or variant>.log    the jobs' logs
include: "datasets_functions.smk"


rule build_dataset:
    input:
        dataset_source_files,
    output:
        rows=f"{RESULTS}/datasets/{{member}}/rows.jsonl",
        manifest=f"{RESULTS}/datasets/{{member}}/manifest.json",
    log:
        f"{RESULTS}/datasets/logs/build_dataset/{{member}}.log",
    params:
        cfg=dataset_member_job,
    wildcard_constraints:
        member=r"(s2s|s2l|s16k|l2s)(-synthetic)?",
    localrule: True
    script:
        "../workflow_scripts/build_dataset.py"


rule dataset_figures:
    input:
        rows=dataset_variant_files("rows.jsonl"),
        manifests=dataset_variant_files("manifest.json"),
    output:
        figure=report(f"{RESULTS}/datasets/figures/{{variant}}_lengths.png", caption="../report/datasets_lengths.rst",
                      category="Datasets", subcategory="{variant}", labels={"shows": "length distributions (figure)"}),
        summary=f"{RESULTS}/datasets/{{variant}}_summary.csv",
    log:
        f"{RESULTS}/datasets/logs/dataset_figures/{{variant}}.log",
    wildcard_constraints:
        variant="synthetic|real",
    localrule: True
    script:
        "../workflow_scripts/dataset_figures.py"
