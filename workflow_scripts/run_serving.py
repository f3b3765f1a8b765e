"""Snakemake entry of rule serving_sweep: check the hardware, then run the rate sweep."""
from pathlib import Path

from inference_eval.backends.base import ModelFiles
from inference_eval.hardware import ensure_local_hardware
from inference_eval.serving.sweep import run_sweep

cfg = snakemake.params.cfg
ensure_local_hardware(snakemake.wildcards.hardware, bool(cfg.get("allow_foreign_hardware")))
inp = snakemake.input
files = ModelFiles(
    hf_dir=str(Path(inp.hf).parent),
    weights_dir=str(Path(inp.weights).parent) if "weights" in inp.keys() else None,
    gguf_path=str(inp.gguf) if "gguf" in inp.keys() else None,
    engine_dir=str(Path(inp.engine).parent) if "engine" in inp.keys() else None,
)
run_sweep(cfg, inp.rows, files, snakemake.output.csv, Path(snakemake.output.record).parent,
          dataset=snakemake.wildcards.dataset)
