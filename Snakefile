# Coarse-to-fine evaluation of LLM inference efficiency.
#   snakemake --cores 8 all                         this machine's hardware (detected), embedded default
#   snakemake --cores 8 results/a100/s2s_table.csv  any output is a target; its path names the hardware
#   snakemake --cores 8 all --config model=llama2-7b overrides="dataset.limit=64"
#   snakemake --report report.html                  the report of what `all` made (after the line above)
#   snakemake --cores 8 envs                        only the per-engine environments (rules/envs.smk)
#   snakemake --cores 1 predictions                 other hardware predicted from the measured results (CPU)
include: "rules/common.smk"
include: "rules/resources.smk"
include: "rules/envs.smk"
include: "rules/datasets.smk"
include: "rules/models.smk"
include: "rules/batch.smk"
include: "rules/serving.smk"
include: "rules/theory.smk"
include: "rules/profiling.smk"
include: "rules/prediction.smk"
include: "rules/report.smk"
include: "rules/report_pages.smk"
include: "rules/tensor_parallel.smk"


# The front page of `snakemake --report report.html` (captions of the items: report/*.rst).
report: "report/workflow.rst"


rule all:
    input:
        all_targets(PIPELINE.hardware),
        report_targets(PIPELINE.hardware),
    default_target: True
