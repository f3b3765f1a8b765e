"""The offline batch scenario: one library, one model, one dataset, one run record.

``run_batch`` runs the library in a fresh child process (``inference_eval.batch_worker``) so that one
library's state cannot leak into another's numbers, and so that a crash, an OOM kill or a hang of the
library becomes a record with a status and a reason instead of a lost job. The parent:

1. loads the plan: the dataset parsed once, its requests and manifest (``batch_plan``),
2. starts the worker with those requests (``batch_watch``); its start-up overlaps the parent's own
   bookkeeping (provenance) while the parent samples the worker's memory,
3. waits for the worker's result file (or its death, or the timeout) and ends its process group,
4. writes the run record (``records.BatchRecord``, built by ``batch_record``) and the per-request CSV,
   atomically.

Status values: ok | invalid (lengths differ) | failed | oom | not_installed | unsupported | env_failed (the
library's environment, ``library.env``, gave no interpreter: ``inference_eval.environments``). The wrong
hardware never gets here: the workflow script stops before (a failed Snakemake job, not a record).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from inference_eval import environments
from inference_eval.batch_plan import job_requests, load_plan, worker_timeout_s
from inference_eval.batch_record import build_record, request_rows, write_requests_csv
from inference_eval.batch_watch import run_worker
from inference_eval.models.files import ModelFiles


def run_batch(cfg: Mapping[str, Any], rows_path: str | Path, files: ModelFiles, record_path: str | Path,
              requests_csv_path: str | Path, log_path: str | Path | None = None, echo: bool = True,
              python: str | None = None) -> dict:
    """Run one batch job in a fresh worker process and write its record and per-request CSV. The worker's
    interpreter is ``python``, else the library's environment (``environments.library_python``).

    Returns the record as written (``BatchRecord.to_dict``). Never raises for a library failure (that is
    the record's status); raises only for bad input of our own (unreadable dataset, bad config).
    """
    from inference_eval.report.provenance import provenance, utc_now

    wall_start = time.perf_counter()
    started = utc_now()
    cfg = dict(cfg)
    gpu = (cfg.get("hardware") or {}).get("kind") == "gpu"
    plan = load_plan(rows_path, cfg)
    job = {"cfg": cfg, "requests": job_requests(plan.requests), "files": asdict(files)}
    timeout_s = worker_timeout_s(cfg)
    env_error = None
    if python is None:
        try:  # the library's interpreter (library.env); none to be had is the record's env_failed
            python = environments.library_python(cfg)
        except environments.EnvironmentFailed as exc:
            python, env_error = sys.executable, str(exc)

    # Provenance (hashing the sources, asking git) overlaps the worker's run: the parent would only wait.
    side: dict[str, Any] = {}

    def _bookkeeping():
        try:
            side["provenance"] = provenance(cfg, started=started, interpreter=python)
        except BaseException as exc:  # re-raised in the caller's thread
            side["error"] = exc

    Path(record_path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".batch-worker-", dir=Path(record_path).parent) as tmp:
        helper = threading.Thread(target=_bookkeeping, name="batch-bookkeeping", daemon=True)
        helper.start()
        if env_error:
            result = {"status": "env_failed", "reason": env_error, "phase": "environment"}
            if log_path:
                Path(log_path).write_text(f"env_failed: {env_error}\n", encoding="utf-8")
        else:
            result = run_worker(job, Path(tmp), timeout_s, Path(log_path) if log_path else None, echo=echo,
                                gpu=gpu, python=python)
        helper.join()
    if "error" in side:
        raise side["error"]
    prov = side["provenance"]
    prov["finished"] = utc_now()
    rows = request_rows(plan.requests, result)
    record = build_record(cfg, plan, result, rows, prov)
    write_requests_csv(requests_csv_path, rows)
    record.harness_wall_s = time.perf_counter() - wall_start
    record.save(record_path)
    return record.to_dict()
