# Thin entry of rule profile_modules (rules/profiling.smk): one library variant's sweeps.
# A job for other hardware than this machine's fails here; a library that cannot be profiled in
# process (e.g. no vLLM) writes its tables as status/reason rows and exits 0.
from pathlib import Path

from inference_eval.hardware import cap_thread_env, ensure_local_hardware
from inference_eval.profiling.workflow import profile_library
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):
    cfg = snakemake.params.cfg
    ensure_local_hardware(snakemake.wildcards.hardware, bool(cfg.get("allow_foreign_hardware")))
    cap_thread_env()

    hf = getattr(snakemake.input, "hf", None)
    outputs = {key: str(getattr(snakemake.output, key)) for key in
               ("prefill_seq", "prefill_batch", "decode_seq", "decode_batch", "points", "record")}
    record = profile_library(cfg, snakemake.wildcards.variant, outputs, hf_dir=str(Path(hf).parent) if hf else None)
    print(f"modules {record['library']}/{record['model']}: {record['status']} {record['reason']}"
          f" (ncu: {record['ncu']['status']})")
