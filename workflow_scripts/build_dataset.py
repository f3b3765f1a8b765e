# Thin entry of rule build_dataset (rules/datasets.smk): one dataset member's rows and manifest.
from inference_eval.datasets.build import build_and_write
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):
    build_and_write(snakemake.params.cfg, snakemake.output.rows, snakemake.output.manifest)
