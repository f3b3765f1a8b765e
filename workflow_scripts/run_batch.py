# Thin entry of rule batch_run (rules/batch.smk): one library x model x dataset batch run.
# A job for other hardware than this machine's fails here (no record); every library outcome
# (ok, invalid, oom, failed, not_installed, unsupported) is a record and exits 0.
from inference_eval.batch import run_batch
from inference_eval.hardware import cap_thread_env, ensure_local_hardware
from inference_eval.models.files import ModelFiles

cfg = snakemake.params.cfg
ensure_local_hardware(snakemake.wildcards.hardware, bool(cfg.get("allow_foreign_hardware")))
cap_thread_env()
record = run_batch(cfg, snakemake.input.rows, ModelFiles.from_rule_inputs(snakemake.input), snakemake.output.record,
                   snakemake.output.requests, log_path=snakemake.log[0] if snakemake.log else None)
print(f"batch {record['library']}/{record['model']}/{record['dataset']}: {record['status']}"
      + (f" ({record['reason']})" if record["reason"] else ""))
