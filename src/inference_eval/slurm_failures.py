"""Turn jobs that SLURM killed (memory limit, time limit) into failure records next to their outputs.

Snakemake's SLURM executor reports such a job as failed and removes its output, so the table that
needs it would have a gap. After the run, `collect(snakemake_logs)` reads Snakemake's own log for the
failed SLURM jobs ("Error in rule ...: ... external_jobid: N"), reads each job's SLURM log for the
kill message slurmstepd wrote (or asks squeue/sacct for the job state), and writes
``<output without suffix>.slurm.json`` in the run-record format: the job's wildcards (hardware,
library, model, dataset, ...), ``status`` (``oom`` or ``timeout``) and a ``reason`` naming the SLURM
job and the limit. Failures that are not SLURM kills (a script error, a node failure, a cancel by hand)
get no record: the script writes its own failed record, or the job is simply rerun on resubmission.

Command line (rules/resources.smk calls `collect` from `onerror`):
    python scripts/slurm_failures.py collect [SNAKEMAKE_LOG ...]   # default: the newest .snakemake/log
    python scripts/slurm_failures.py list [RESULTS_DIR]            # failure records present
    python scripts/slurm_failures.py clear [RESULTS_DIR]           # remove them: resubmitting retries
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

if __package__ in (None, ""):  # run as a file: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from inference_eval.io import write_json  # noqa: E402

SUFFIX = ".slurm.json"
# slurmstepd lines in a job's log, e.g.
#   slurmstepd-vm: error: *** JOB 2 ON vm CANCELLED AT 2026-11-25T04:54:22 DUE TO TIME LIMIT ***
#   slurmstepd-vm: error: StepId=6.0 exceeded memory limit (989749248 > 314572800), being killed
#   slurmstepd: error: Detected 1 oom-kill event(s) in StepId=7.batch. Some of your processes may ...
_TIME_LIMIT = re.compile(r"\*\*\* (?:JOB|STEP) (?P<id>[\d.]+) ON \S+ CANCELLED AT \S+ DUE TO TIME LIMIT")
_MEMORY_LIMIT = re.compile(r"exceeded memory limit \((?P<used>\d+) > (?P<limit>\d+)\)")
_OOM_KILL = re.compile(r"Detected \d+ oom[-_]kill event")
_STATE_IN_MESSAGE = re.compile(r"SLURM status is: '(?P<state>[A-Z_]+)'")
_KILL_STATES = {"TIMEOUT": "timeout", "OUT_OF_MEMORY": "oom"}


@dataclass
class FailedJob:
    """One "Error in rule" block of Snakemake's log for a job the SLURM executor ran."""

    rule: str
    jobid: str
    slurm_job_id: str
    outputs: list[str] = field(default_factory=list)
    slurm_log: str | None = None
    message: str = ""
    wildcards: dict[str, str] = field(default_factory=dict)


def _field(block: list[str], name: str) -> str | None:
    prefix = f"    {name}: "
    for line in block:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def _blocks(lines: list[str], header: re.Pattern) -> Iterable[tuple[re.Match, list[str]]]:
    """Indented blocks that follow a header line ("Error in rule x:", "rule x:")."""
    for i, line in enumerate(lines):
        m = header.match(line)
        if not m:
            continue
        block = []
        for follow in lines[i + 1:]:
            if not follow.startswith("    "):
                break
            block.append(follow)
        yield m, block


def _wildcards(text: str | None) -> dict[str, str]:
    out = {}
    for part in (text or "").split(", "):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_failed_slurm_jobs(log_text: str) -> list[FailedJob]:
    """Failed SLURM jobs of one Snakemake run, with outputs, wildcards and their SLURM log."""
    lines = log_text.splitlines()
    wildcards_by_jobid: dict[str, dict[str, str]] = {}
    for _, block in _blocks(lines, re.compile(r"^(?:local)?rule (\S+):$")):
        jobid = _field(block, "jobid")
        if jobid is not None:
            wildcards_by_jobid[jobid] = _wildcards(_field(block, "wildcards"))
    failed: dict[str, FailedJob] = {}
    for m, block in _blocks(lines, re.compile(r"^Error in rule (\S+):$")):
        slurm_id = _field(block, "external_jobid")
        if not slurm_id:
            continue  # not a SLURM job (a local rule) or not submitted
        jobid = _field(block, "jobid") or ""
        # "log:" lists the rule's own logs, then the SLURM log: <slurm logdir>/rule_x/<wildcards>/<id>.log
        logs = (_field(block, "log") or "").split(" (check log")[0].split(", ")
        log = next((p for p in logs if p.endswith(f"/{slurm_id}.log")), logs[-1] or None)
        outputs = [o.strip() for o in (_field(block, "output") or "").split(", ") if o.strip()]
        failed[slurm_id] = FailedJob(rule=m.group(1), jobid=jobid, slurm_job_id=slurm_id, outputs=outputs,
                                     slurm_log=log, message=_field(block, "message") or "",
                                     wildcards=wildcards_by_jobid.get(jobid, {}))
    return list(failed.values())


def slurm_state(job_id: str) -> str | None:
    """The job's final state from squeue (while the controller remembers it) or sacct; None if unknown."""
    for cmd in (["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"]):
        if not shutil.which(cmd[0]):
            continue
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        state = out.stdout.strip().split("\n")[0].split(" ")[0] if out.returncode == 0 else ""
        if state:
            return state
    return None


def kill_reason(job: FailedJob, log_text: str, state: str | None) -> tuple[str, str] | None:
    """(status, reason) when SLURM killed the job for a resource limit, else None."""
    state = state or (m.group("state") if (m := _STATE_IN_MESSAGE.search(job.message)) else None)
    where = f"SLURM job {job.slurm_job_id} (rule {job.rule}, state {state or 'unknown'})"
    if m := _MEMORY_LIMIT.search(log_text):
        used, limit = int(m.group("used")) / 2**20, int(m.group("limit")) / 2**20
        return "oom", (f"{where} killed: exceeded its memory limit ({used:.0f} MiB used > {limit:.0f} MiB "
                       "requested; raise hardware.slurm.mem_mb)")
    if _OOM_KILL.search(log_text) or state == "OUT_OF_MEMORY":
        return "oom", f"{where} killed by the out-of-memory killer (raise hardware.slurm.mem_mb)"
    if _TIME_LIMIT.search(log_text) or state == "TIMEOUT":
        return "timeout", f"{where} cancelled at its time limit (raise hardware.slurm.runtime_min)"
    return None


def failure_path(output: str | Path) -> Path:
    """Where the failure record of ``output`` lies: ``<output without suffix>.slurm.json``."""
    output = Path(output)
    return output.with_name(output.with_suffix("").name + SUFFIX)


def record_or_failure(path: str | Path) -> str:
    """``path`` if it exists or no failure record stands for it, else the failure record's path."""
    return stand_in(path)


def stand_in(path: str | Path, first_output: str | Path | None = None) -> str:
    """``path`` if it exists, else the failure record of the job that makes it (the record lies beside
    that job's first output, ``first_output``, which defaults to ``path``), else ``path``."""
    failure = failure_path(first_output or path)
    if not Path(path).exists() and failure.exists():
        return str(failure)
    return str(path)


def read_table(path: str | Path):
    """A CSV output as a DataFrame, or, for a failure record standing in for it, its one row: the job's
    wildcards (``library`` from ``variant`` for profiling jobs), ``status`` and ``reason``."""
    import pandas as pd

    if not str(path).endswith(SUFFIX):
        return pd.read_csv(path)
    rec = json.loads(Path(path).read_text())
    row = {k: v for k, v in rec.items() if isinstance(v, (str, int, float)) and k != "kind"}
    row.setdefault("library", rec.get("variant", ""))
    return pd.DataFrame([row])


def failure_record(job: FailedJob, status: str, reason: str, state: str | None) -> dict:
    record = {"kind": "slurm_failure", **job.wildcards, "status": status, "reason": reason,
              "rule": job.rule, "outputs": job.outputs,
              "slurm": {"job_id": job.slurm_job_id, "state": state, "log": job.slurm_log},
              "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return record


def collect(snakemake_logs: Iterable[str | Path] | str | Path) -> list[Path]:
    """Write failure records for the SLURM-killed jobs in these Snakemake logs; return their paths."""
    if isinstance(snakemake_logs, (str, Path)):
        snakemake_logs = [snakemake_logs]
    written = []
    for log_path in snakemake_logs:
        text = Path(log_path).read_text(errors="replace")
        for job in parse_failed_slurm_jobs(text):
            if not job.outputs or all(Path(o).exists() for o in job.outputs):
                continue
            job_log = Path(job.slurm_log).read_text(errors="replace") if job.slurm_log and \
                Path(job.slurm_log).exists() else ""
            state = slurm_state(job.slurm_job_id)
            found = kill_reason(job, job_log, state)
            if found is None:
                continue
            status, reason = found
            target = failure_path(job.outputs[0])
            write_json(target, failure_record(job, status, reason, state))
            written.append(target)
    return written


def _newest_log() -> list[Path]:
    logs = sorted(Path(".snakemake/log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise SystemExit("no Snakemake log under .snakemake/log: run from the workflow's directory or name one")
    return logs[-1:]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("collect", "list", "clear"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "collect":
        for path in collect([Path(p) for p in argv[1:]] or _newest_log()):
            print(path)
        return 0
    root = Path(argv[1] if len(argv) > 1 else "results")
    if not root.is_dir():
        raise SystemExit(f"no results folder {root}")
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        if argv[0] == "clear":
            path.unlink()
            print(f"removed {path}")
        else:
            rec = json.loads(path.read_text())
            print(f"{path}\t{rec.get('status')}\t{rec.get('reason')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
