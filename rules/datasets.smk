# The four task-shaped datasets (s2s, s2l, s16k, l2s), real or synthetic, and their length figures.
#   results/datasets/<member>/rows.jsonl + manifest.json     member: s2s | s2s-synthetic | ... | l2s-synthetic
#   results/datasets/figures/<variant>_lengths.png, results/datasets/<variant>_summary.csv   variant: synthetic | real
DATASET_TASKS = ["s2s", "s2l", "s16k", "l2s"]


def dataset_member_job(wildcards):
    # Only what a build reads: a changed model or library config must not rebuild the datasets.
    job = PIPELINE.job(dataset_member=wildcards.member)
    return {key: job[key] for key in ("dataset", "data_root", "seed")}


def dataset_source_files(wildcards):
    """Local source files (explicit path or under data_root) so a changed source reruns the build."""
    from inference_eval.datasets.sources import local_source_paths

    return local_source_paths(dataset_member_job(wildcards))


def dataset_variant_members(variant):
    return [f"{task}-synthetic" if variant == "synthetic" else task for task in DATASET_TASKS]


rule build_dataset:
    input:
        dataset_source_files,
    output:
        rows=f"{RESULTS}/datasets/{{member}}/rows.jsonl",
        manifest=f"{RESULTS}/datasets/{{member}}/manifest.json",
    params:
        cfg=dataset_member_job,
    wildcard_constraints:
        member=r"(s2s|s2l|s16k|l2s)(-synthetic)?",
    localrule: True
    script:
        "../workflow_scripts/build_dataset.py"


rule dataset_figures:
    input:
        rows=lambda wc: expand(f"{RESULTS}/datasets/{{member}}/rows.jsonl", member=dataset_variant_members(wc.variant)),
        manifests=lambda wc: expand(f"{RESULTS}/datasets/{{member}}/manifest.json",
                                    member=dataset_variant_members(wc.variant)),
    output:
        figure=report(f"{RESULTS}/datasets/figures/{{variant}}_lengths.png", caption="../report/datasets_lengths.rst",
                      category="Datasets", subcategory="{variant}", labels={"shows": "length distributions (figure)"}),
        summary=f"{RESULTS}/datasets/{{variant}}_summary.csv",
    wildcard_constraints:
        variant="synthetic|real",
    localrule: True
    script:
        "../workflow_scripts/dataset_figures.py"
