# Input and parameter functions of rules/datasets.smk (which includes this file).
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


def dataset_variant_files(name):
    """Input function: every member's ``name`` (rows.jsonl, manifest.json) of the {variant}."""
    def files(wildcards):
        return [f"{RESULTS}/datasets/{member}/{name}" for member in dataset_variant_members(wildcards.variant)]

    return files
