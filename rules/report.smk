# Tables and figures from the run records.


def batch_records(wildcards):
    hw = wildcards.hardware
    # A job SLURM killed (time limit, OOM) is its failure record's row (rules/resources.smk).
    return [record_or_slurm_failure(f"{RESULTS}/{hw}/batch/{lib}/{m}/{wildcards.dataset}.json")
            for m in PIPELINE.models for lib in PIPELINE.libraries]


rule dataset_table:
    input:
        records=batch_records,
        bound=f"{RESULTS}/{{hardware}}/{{dataset}}_bound.csv",
    output:
        f"{RESULTS}/{{hardware}}/{{dataset}}_table.csv",
    localrule: True
    script:
        "../workflow_scripts/dataset_table.py"


rule throughput_figure:
    input:
        tables=expand(f"{RESULTS}/{{{{hardware}}}}/{{dataset}}_table.csv", dataset=PIPELINE.datasets),
    output:
        report(f"{RESULTS}/{{hardware}}/figures/throughput.png", caption="../report/throughput.rst",
               category="Batch", subcategory="all datasets", labels={"shows": "throughput per library (figure)"}),
    params:
        datasets=PIPELINE.datasets,
    localrule: True
    script:
        "../workflow_scripts/throughput_figure.py"
