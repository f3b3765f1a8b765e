"""Supervising the batch worker: start it in its own process group (``inference_eval.processes``), forward
and keep its output, sample its memory, wait for its result (or its death, or the timeout), end its group,
and turn a worker that died without a result into a status and a reason.

Status values: ok | invalid (lengths differ) | failed | oom | not_installed | unsupported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from inference_eval import environments, processes
from inference_eval.telemetry import nvml_device_index
from inference_eval.termination import raise_if_terminated, terminate_on_sigterm

STATUSES = ("ok", "invalid", "failed", "oom", "not_installed", "unsupported", "env_failed")
# After the worker wrote its result, how long it may take to exit (libraries that hang in shutdown).
EXIT_GRACE_S = 30.0
# How long the worker's leftover processes get between SIGTERM and SIGKILL.
GROUP_GRACE_S = 2.0
POLL_S = 0.02
TAIL_BYTES = 4000
# Memory sampling period: a scan of the process table each time (about 1 ms here, more on big nodes).
SAMPLE_S = 0.5
OOM_MARKERS = ("outofmemoryerror", "out of memory", "cannot allocate memory", "memoryerror")


def worker_argv(job_path: str | Path, result_path: str | Path, python: str = sys.executable,
                parent_pid: int | None = None) -> list[str]:
    """The worker's command line: ``python -m inference_eval.batch_worker JOB RESULT PARENT_PID``.

    ``python`` is the interpreter that runs the library; ``parent_pid`` (default: this process) is the
    harness the worker dies with (``processes.die_with_parent``)."""
    pid = os.getpid() if parent_pid is None else parent_pid
    return [python, "-m", "inference_eval.batch_worker", str(job_path), str(result_path), str(pid)]


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
        return pynvml.nvmlDeviceGetHandleByIndex(nvml_device_index())
    except Exception:
        return None


def child_env(python: str = sys.executable) -> dict[str, str]:
    """The worker imports what we import (our ``sys.path`` first on its ``PYTHONPATH``); in another
    environment's interpreter, only the package's own source (``environments.child_env``)."""
    return environments.child_env(python)


def describe_exit(returncode: int, timed_out: bool, timeout_s: float, tail: str,
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


def run_worker(job: dict, workdir: Path, timeout_s: float, log_path: Path | None = None,
               echo: bool = True, gpu: bool = False, python: str = sys.executable) -> dict[str, Any]:
    """Run ``inference_eval.batch_worker`` on ``job`` and return its result (or a synthesised failure)."""
    job_path, result_path = workdir / "job.json", workdir / "result.json"
    job_path.write_text(json.dumps(job, default=str), encoding="utf-8")
    started = time.perf_counter()
    proc = processes.start_group(worker_argv(job_path, result_path, python=python), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(python))
    output = _OutputTail(proc.stdout, log_path, echo)
    sampler = _MemorySampler(proc.pid, gpu=gpu)
    timed_out = False
    result_seen_at = None
    exited_at = None
    watch = processes.ExitWatch(proc)
    try:
        with terminate_on_sigterm():  # Snakemake or SLURM cancelling: unwind, so the worker is killed
            while True:
                raise_if_terminated()
                if watch.wait(POLL_S):
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
        watch.close()
        processes.end_group(proc, GROUP_GRACE_S, kill_wait_s=10.0)
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
        status, reason = describe_exit(proc.returncode if not timed_out else -9, timed_out, timeout_s,
                                       output.last_lines(), phase)
        result.update(status=status, reason=reason, phase=phase)
    result["worker_wall_s"] = wall
    result["worker_exit"] = proc.returncode
    result["sampled_peak_rss_bytes"] = sampler.peak_rss
    result["sampled_peak_gpu_used_bytes"] = sampler.peak_gpu_used
    return result
