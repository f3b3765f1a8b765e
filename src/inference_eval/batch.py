"""The offline batch scenario: one library, one model, one dataset, one run record.

``run_batch`` runs the library in a fresh child process (``inference_eval.batch_worker``) so that one
library's state cannot leak into another's numbers, and so that a crash, an OOM kill or a hang of the
library becomes a record with a status and a reason instead of a lost job. The parent:

1. starts the worker first (its start-up overlaps the parent's own bookkeeping),
2. meanwhile loads the requests, computes provenance and samples the worker's memory,
3. waits for the worker's result file (or its death, or the timeout),
4. writes the run record (``docs/ARCHITECTURE.md``) and the per-request CSV, atomically.

Status values: ok | invalid (lengths differ) | failed | oom | not_installed | unsupported | env_failed (the
library's environment, ``library.env``, gave no interpreter: ``inference_eval.environments``). The wrong
hardware never gets here: the workflow script stops before (a failed Snakemake job, not a record).
"""

from __future__ import annotations

import csv
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from inference_eval import environments, fairness
from inference_eval.datasets.manifest import read_manifest
from inference_eval.io import atomic_path, write_json
from inference_eval.models.files import ModelFiles
from inference_eval.report.uncertainty import coefficient_of_variation, mean_ci95
from inference_eval.requests import Request, load_requests, run_limits, run_requests
from inference_eval.termination import raise_if_terminated, terminate_on_sigterm

STATUSES = ("ok", "invalid", "failed", "oom", "not_installed", "unsupported", "env_failed")
REQUEST_COLUMNS = ["id", "prompt_tokens", "requested", "output_tokens", "ok", "error"]
# Margin left inside the SLURM runtime so the record is written before the scheduler kills the job.
RUNTIME_MARGIN_S = 120
# After the worker wrote its result, how long it may take to exit (libraries that hang in shutdown).
EXIT_GRACE_S = 30.0
# How long the worker's leftover processes get between SIGTERM and SIGKILL.
GROUP_GRACE_S = 2.0
POLL_S = 0.02
TAIL_BYTES = 4000
# Memory sampling period: a scan of the process table each time (about 1 ms here, more on big nodes).
SAMPLE_S = 0.5
OOM_MARKERS = ("outofmemoryerror", "out of memory", "cannot allocate memory", "memoryerror")


# -- what a run uses ------------------------------------------------------------------------------
def batch_requests(rows_path: str | Path, cfg: Mapping[str, Any]) -> tuple[list[Request], int]:
    """The requests of this run (first ``limit`` rows, ``max_tokens`` capped) and the dataset's row count."""
    return run_requests(rows_path, cfg), len(load_requests(rows_path))


def worker_timeout_s(cfg: Mapping[str, Any]) -> float:
    """``scenario.timeout_s`` if set, else the hardware's SLURM runtime minus a margin for the record."""
    explicit = (cfg.get("scenario") or {}).get("timeout_s")
    if explicit:
        return float(explicit)
    runtime_min = ((cfg.get("hardware") or {}).get("slurm") or {}).get("runtime_min") or 60
    return max(60.0, float(runtime_min) * 60 - RUNTIME_MARGIN_S)


def batch_repeats(cfg: Mapping[str, Any], warmup: bool = False) -> int:
    """Timed runs of the dataset: ``scenario.repeats``, else the hardware's ``scale.batch_repeats``
    (3 on the GPU profiles, 1 on the CPU default), else 1. With ``warmup``: the untimed runs of the whole
    dataset before them, ``scenario.warmup_repeats``, else ``scale.batch_warmup_repeats``, else 0."""
    name, scale_name, default, least = (("warmup_repeats", "batch_warmup_repeats", 0, 0) if warmup
                                        else ("repeats", "batch_repeats", 1, 1))
    value = (cfg.get("scenario") or {}).get(name)
    key = f"scenario.{name}"
    if value is None:
        value = ((cfg.get("hardware") or {}).get("scale") or {}).get(scale_name)
        key = f"hardware.scale.{scale_name}"
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{key} must be an integer >= {least}, got {value!r}")
    return value


# -- the worker process ---------------------------------------------------------------------------
class _OutputTail:
    """Forward the worker's output to our stderr (and a log file) while keeping its last bytes."""

    def __init__(self, stream, log_path: Path | None, echo: bool):
        self.tail: deque[bytes] = deque()
        self.size = 0
        self._stream = stream
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb") if log_path else None
        self._echo = echo
        self._thread = threading.Thread(target=self._pump, name="batch-worker-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._stream.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.tail.append(chunk)
            self.size += len(chunk)
            while self.size - len(self.tail[0]) > TAIL_BYTES:
                self.size -= len(self.tail.popleft())
            if self._log:
                self._log.write(chunk)
            if self._echo:
                try:
                    sys.stderr.write(chunk.decode("utf-8", "replace"))
                    sys.stderr.flush()
                except (OSError, ValueError):
                    self._echo = False

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)
        if self._log:
            self._log.close()

    def last_lines(self, n: int = 8) -> str:
        text = b"".join(self.tail).decode("utf-8", "replace").replace("\r", "\n")
        lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
        return " | ".join(lines[-n:])


class _MemorySampler:
    """Peak resident memory of the worker's process tree (CPU), sampled; and device memory where
    NVML is importable (GPU libraries whose engine lives in another process)."""

    def __init__(self, pid: int, gpu: bool, interval_s: float = SAMPLE_S):
        self.pid = pid
        self.peak_rss = 0
        self.peak_gpu_used = 0
        self._interval = interval_s
        self._stop = threading.Event()
        self._nvml = _nvml_handle() if gpu else None
        self._thread = threading.Thread(target=self._run, name="batch-memory-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            if self._nvml is not None:
                try:
                    import pynvml
                    self.peak_gpu_used = max(self.peak_gpu_used, pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used)
                except Exception:
                    self._nvml = None
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def _nvml_handle():
    try:
        import pynvml
        pynvml.nvmlInit()
        index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None


def _child_env(python: str | None = None) -> dict[str, str]:
    """The worker imports what we import (our ``sys.path`` first on its ``PYTHONPATH``); in another
    environment's interpreter, only the package's own source (``environments.child_env``)."""
    return environments.child_env(python or sys.executable)


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in the group: orphans re-parented to an init that
    reaps slowly stay zombies, which ``killpg(pgid, 0)`` would still count."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        import psutil
    except ImportError:
        return True
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return False


def _kill_group(proc: subprocess.Popen, grace_s: float = GROUP_GRACE_S) -> None:
    """End the worker and everything it started (its own session), even if the worker is gone:
    SIGTERM, up to ``grace_s`` to exit, then SIGKILL."""
    if proc.poll() is None or _group_alive(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.perf_counter() + grace_s
        while time.perf_counter() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                break
            time.sleep(POLL_S)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _describe_exit(returncode: int, timed_out: bool, timeout_s: float, tail: str,
                   phase: str = "start-up") -> tuple[str, str]:
    """(status, reason) for a worker that ended without writing its result."""
    where = f"; last output: {tail}" if tail else ""
    if timed_out:
        return "failed", f"timed out after {timeout_s:.0f} s during {phase} (worker killed){where}"
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else str(-returncode)
        if -returncode == signal.SIGKILL:
            return "oom", (f"worker killed by {sig} during {phase} (not by the harness): most likely the kernel's "
                           f"OOM killer{where}")
        return "failed", f"worker died from signal {sig} during {phase}{where}"
    if any(m in tail.lower() for m in OOM_MARKERS):
        return "oom", f"worker exited with code {returncode} during {phase} after running out of memory{where}"
    return "failed", f"worker exited with code {returncode} during {phase} without a result{where}"


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3
        return None


def _wait_exit(proc: subprocess.Popen, pidfd: int | None, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the worker to exit; True if it has. A pidfd wakes at the exit
    itself, so the measured exit time holds no polling delay."""
    if pidfd is not None:
        select.select([pidfd], [], [], timeout_s)
        return proc.poll() is not None
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def run_worker(job: dict, workdir: Path, timeout_s: float, log_path: Path | None = None,
               echo: bool = True, gpu: bool = False, python: str | None = None) -> dict[str, Any]:
    """Run ``inference_eval.batch_worker`` on ``job`` with ``python`` (default: this interpreter) and
    return its result (or a synthesised failure)."""
    job_path, result_path = workdir / "job.json", workdir / "result.json"
    job_path.write_text(json.dumps(job, default=str), encoding="utf-8")
    python = python or sys.executable
    cmd = [python, "-m", "inference_eval.batch_worker", str(job_path), str(result_path), str(os.getpid())]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=_child_env(python), start_new_session=True)
    output = _OutputTail(proc.stdout, log_path, echo)
    sampler = _MemorySampler(proc.pid, gpu=gpu)
    timed_out = False
    result_seen_at = None
    exited_at = None
    pidfd = _open_pidfd(proc.pid)
    try:
        with terminate_on_sigterm():  # Snakemake or SLURM cancelling: unwind, so the worker is killed
            while True:
                raise_if_terminated()
                if _wait_exit(proc, pidfd, POLL_S):
                    exited_at = time.monotonic()
                    break
                now = time.perf_counter()
                if result_seen_at is None and result_path.exists():
                    result_seen_at = now
                if result_seen_at is not None and now - result_seen_at > EXIT_GRACE_S:
                    break  # the result is written; a library hanging in its shutdown costs no more
                if now - started > timeout_s:
                    timed_out = True
                    break
    finally:
        if pidfd is not None:
            os.close(pidfd)
        _kill_group(proc)
        sampler.stop()
        output.join()
    wall = time.perf_counter() - started
    if result_path.exists():
        result = json.loads(result_path.read_text(encoding="utf-8"))
        written_at = result.pop("written_at_monotonic", None)
        if written_at is not None and exited_at is not None:
            # the process's end after its result: the kernel freeing the library's memory and threads
            result["exit_time_s"] = max(0.0, exited_at - written_at)
    else:
        progress_path = result_path.with_name(result_path.name + ".progress")
        result = json.loads(progress_path.read_text(encoding="utf-8")) if progress_path.exists() else {}
        phase = result.get("phase", "start-up")
        status, reason = _describe_exit(proc.returncode if not timed_out else -9, timed_out, timeout_s,
                                        output.last_lines(), phase)
        result.update(status=status, reason=reason, phase=phase)
    result["worker_wall_s"] = wall
    result["worker_exit"] = proc.returncode
    result["sampled_peak_rss_bytes"] = sampler.peak_rss
    result["sampled_peak_gpu_used_bytes"] = sampler.peak_gpu_used
    return result


# -- the record -----------------------------------------------------------------------------------
def peak_memory(result: Mapping[str, Any], gpu: bool) -> tuple[float | None, str | None]:
    """(GB of 1e9 bytes, what was measured)."""
    mem = result.get("memory") or {}
    if mem.get("backend_gb") is not None:
        return round(float(mem["backend_gb"]), 4), "reported by the library"
    if gpu:
        if mem.get("torch_max_allocated_bytes"):
            return round(mem["torch_max_allocated_bytes"] / 1e9, 4), "torch.cuda.max_memory_allocated (worker)"
        if result.get("sampled_peak_gpu_used_bytes"):
            return (round(result["sampled_peak_gpu_used_bytes"] / 1e9, 4),
                    f"device memory used (NVML, sampled every {SAMPLE_S} s; includes other processes)")
        return None, None
    rss = max(int(mem.get("self_max_rss_bytes") or 0), int(result.get("sampled_peak_rss_bytes") or 0))
    if rss:
        return round(rss / 1e9, 4), "CPU peak resident memory of the worker process tree (getrusage + sampling)"
    return None, None


def request_rows(requests: Sequence[Request], result: Mapping[str, Any]) -> list[dict[str, Any]]:
    per_request = {r["id"]: r for r in result.get("requests") or []}
    fallback = result.get("reason") or "no result"
    rows = []
    for r in requests:
        got = per_request.get(r.id)
        out = int(got["output_tokens"]) if got else 0
        error = (got.get("error") or "") if got else fallback
        rows.append({"id": r.id, "prompt_tokens": r.prompt_len, "requested": r.max_tokens, "output_tokens": out,
                     "ok": bool(got) and not error and out == r.max_tokens, "error": error})
    return rows


def write_requests_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=REQUEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def build_record(cfg: Mapping[str, Any], rows_path: str | Path, requests: Sequence[Request], dataset_rows: int,
                 result: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], prov: dict[str, Any]) -> dict:
    manifest = read_manifest(rows_path)
    dataset_cfg = cfg.get("dataset") or {}
    gpu = (cfg.get("hardware") or {}).get("kind") == "gpu"
    status = result.get("status") or "failed"
    total = result.get("total_time_s")
    ran = status in ("ok", "invalid") and total is not None and total > 0
    output_tokens = sum(r["output_tokens"] for r in rows)
    mem_gb, mem_kind = peak_memory(result, gpu)
    limit, cap = run_limits(cfg)
    times = [float(t) for t in result.get("repeat_times_s") or ([total] if total is not None else [])]
    _, time_lo, time_hi = (None if math.isnan(v) else v for v in mean_ci95(times))
    cv = coefficient_of_variation(times)
    n_exact = sum(1 for r in rows if r["ok"])
    fair = fairness.manifest(
        cfg, "batch", requests, exact=(status == "ok") if ran else None, n_exact=n_exact,
        resolved=result.get("resolved_settings") or {},
        resolved_source="the loaded engine's own config" if result.get("resolved_settings") else "",
        dataset_manifest=manifest,
        extra={"no_result": not ran, "repeats": len(times),
               "warmup_repeats": result.get("warmup_repeats", 0),
               "repeats_method": (f"{len(times)} timed run(s) of the whole dataset in one loaded engine, after "
                                  f"{result.get('warmup_requests', 0)} untimed warm-up request(s) and "
                                  f"{result.get('warmup_repeats', 0)} untimed run(s) of the whole dataset; "
                                  f"prefix caching as in settings")})
    return {
        "kind": "batch",
        "library": cfg["library"]["name"],
        "model": cfg["model"]["name"],
        "dataset": dataset_cfg.get("name"),
        "dataset_member": Path(rows_path).parent.name,
        "dataset_source": manifest.get("source", dataset_cfg.get("source")),
        "synthetic": bool(manifest.get("synthetic", dataset_cfg.get("synthetic", False))),
        "hardware": cfg["hardware"]["name"],
        "status": status,
        "reason": result.get("reason") or "",
        "n_requests": len(requests),
        "dataset_rows": dataset_rows,
        "input_tokens": sum(r.prompt_len for r in requests),
        "requested_output_tokens": sum(r.max_tokens for r in requests),
        "output_tokens": output_tokens,
        "n_exact": n_exact,
        "total_time_s": total,
        "repeats": len(times),
        "repeat_times_s": times,
        "total_time_ci95_lo_s": time_lo if ran else None,
        "total_time_ci95_hi_s": time_hi if ran else None,
        "total_time_cv": cv if ran and not math.isnan(cv) else None,
        "token_throughput_ci95_lo_tok_s": (output_tokens / time_hi) if ran and time_hi else None,
        "token_throughput_ci95_hi_tok_s": (output_tokens / time_lo) if ran and time_lo and time_lo > 0 else None,
        "load_time_s": result.get("load_time_s"),
        "token_throughput_tok_s": (output_tokens / total) if ran else None,
        "requests_per_s": (len(requests) / total) if ran else None,
        "peak_memory_gb": mem_gb,
        "peak_memory_kind": mem_kind,
        "row_limit": limit,
        "max_tokens_cap": cap,
        "import_time_s": result.get("import_time_s"),
        "warmup_time_s": result.get("warmup_time_s"),
        "warmup_repeats": result.get("warmup_repeats", 0),
        "warmup_repeats_time_s": result.get("warmup_repeats_time_s"),
        "close_time_s": result.get("close_time_s"),
        "exit_time_s": result.get("exit_time_s"),
        "worker_wall_s": result.get("worker_wall_s"),
        "worker_exit": result.get("worker_exit"),
        "failed_phase": result.get("phase") if status not in ("ok", "invalid") else None,
        "library_versions": result.get("versions") or {},
        "backend_stats": result.get("backend_stats") or {},
        "prepare_time_s": result.get("prepare_time_s"),
        "fairness": fair,
        "provenance": prov,
    }


def run_batch(cfg: Mapping[str, Any], rows_path: str | Path, files: ModelFiles, record_path: str | Path,
              requests_csv_path: str | Path, log_path: str | Path | None = None, echo: bool = True) -> dict:
    """Run one batch job in a fresh worker process and write its record and per-request CSV.

    Returns the record. Never raises for a library failure (that is the record's status); raises only
    for bad input of our own (unreadable dataset, bad config).
    """
    from inference_eval.report.provenance import provenance, utc_now

    wall_start = time.perf_counter()
    started = utc_now()
    cfg = dict(cfg)
    gpu = (cfg.get("hardware") or {}).get("kind") == "gpu"
    job = {"cfg": cfg, "rows_path": str(rows_path), "files": asdict(files)}
    timeout_s = worker_timeout_s(cfg)
    try:  # the library's interpreter (library.env); none to be had is the record's env_failed
        python, env_error = environments.library_python(cfg), None
    except environments.EnvironmentFailed as exc:
        python, env_error = sys.executable, str(exc)

    # Bookkeeping that overlaps the worker's run (the parent would otherwise just wait).
    side: dict[str, Any] = {}

    def _bookkeeping():
        try:
            side["requests"], side["dataset_rows"] = batch_requests(rows_path, cfg)
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
            result = run_worker(job, Path(tmp), timeout_s, Path(log_path) if log_path else None, echo=echo, gpu=gpu,
                                python=python)
        helper.join()
    if "error" in side:
        raise side["error"]
    requests = side["requests"]
    prov = side["provenance"]
    prov["finished"] = utc_now()
    rows = request_rows(requests, result)
    record = build_record(cfg, rows_path, requests, side["dataset_rows"], result, rows, prov)
    write_requests_csv(requests_csv_path, rows)
    record["harness_wall_s"] = time.perf_counter() - wall_start
    write_json(record_path, record)
    return record
