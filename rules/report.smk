# Tables and figures from the run records.
#   results/{hardware}/{dataset}_table.csv     one row per (library, model), grouped by model
#   results/{hardware}/figures/throughput.png  one panel per model
#   results/{hardware}/logs/<rule>/...         the jobs' logs
include: "report_functions.smk"


rule dataset_table:
    input:
        records=batch_records,
        bound=f"{RESULTS}/{{hardware}}/{{dataset}}_bound.csv",
    output:
        f"{RESULTS}/{{hardware}}/{{dataset}}_table.csv",
    log:
        f"{RESULTS}/{{hardware}}/logs/dataset_table/{{dataset}}.log",
    localrule: True
    script:
        "../workflow_scripts/dataset_table.py"


rule throughput_figure:
    input:
        tables=expand(f"{RESULTS}/{{{{hardware}}}}/{{dataset}}_table.csv", dataset=PIPELINE.datasets),
    output:
        report(f"{RESULTS}/{{hardware}}/figures/throughput.png", caption="../report/throughput.rst",
               category="Batch", subcategory="all datasets", labels={"shows": "throughput per library (figure)"}),
    log:
        f"{RESULTS}/{{hardware}}/logs/throughput_figure.log",
    params:
        datasets=PIPELINE.datasets,
    localrule: True
    script:
        "../workflow_scripts/throughput_figure.py"
