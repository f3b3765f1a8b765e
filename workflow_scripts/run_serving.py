"""Snakemake entry of rule serving_sweep: check the hardware, then run the rate sweep."""
from pathlib import Path

from inference_eval.hardware import cap_thread_env, ensure_local_hardware
from inference_eval.models.files import ModelFiles
from inference_eval.rule_log import tee_to_log
from inference_eval.serving.sweep import run_sweep

with tee_to_log(snakemake.log[0]):
    cfg = snakemake.params.cfg
    ensure_local_hardware(snakemake.wildcards.hardware, bool(cfg.get("allow_foreign_hardware")))
    cap_thread_env()
    run_sweep(cfg, snakemake.input.rows, ModelFiles.from_rule_inputs(snakemake.input), snakemake.output.csv,
              Path(snakemake.output.record).parent, dataset=snakemake.wildcards.dataset)
