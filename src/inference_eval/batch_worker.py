"""The child process of a batch run: ``python -m inference_eval.batch_worker JOB RESULT [PARENT_PID]``.

Runs one library on the requests of JOB (the parent's plan: ``batch_plan.job_requests``) and writes RESULT
(JSON, atomically): status, reason, the phase it reached, import/load/generate times, per-request output
token counts (from ids) and memory. Any exception of the library becomes a status here; what kills the
process outright (a segfault, the OOM killer, a hang) is described by the parent
(``inference_eval.batch_watch``) from the exit and output.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from inference_eval.backends.base import Backend, load_backend_class
from inference_eval.io import write_json
from inference_eval.models.files import ModelFiles
from inference_eval.processes import die_with_parent
from inference_eval.telemetry import GpuTelemetry

if TYPE_CHECKING:
    from inference_eval.requests import Request

# The rest of the harness (inference_eval.batch_plan, batch_watch, traceback, resource) is imported
# after the library: the standard modules both need are then loaded by the library's import, which is timed as
# the library's, and what the harness adds on top is what it really costs (harness_overhead.py).
EXTRA_OOM_MESSAGES = ("available kv cache memory",)
DEFAULT_WARMUP_REQUESTS = 1


def classify(exc: BaseException) -> str:
    """Status for an exception the library raised."""
    from inference_eval.batch_watch import OOM_MARKERS
    status = getattr(exc, "status", None)
    if isinstance(status, str) and status in ("not_installed", "unsupported"):
        return status
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    if any(m in str(exc).lower() for m in OOM_MARKERS + EXTRA_OOM_MESSAGES):
        return "oom"
    return "failed"


def _reason(exc: BaseException, phase: str) -> str:
    message = str(exc).strip().splitlines()
    head = message[0] if message else ""
    if len(head) > 500:
        head = head[:500] + "..."
    return f"{type(exc).__name__} during {phase}: {head}" if head else f"{type(exc).__name__} during {phase}"


def memory_snapshot(backend) -> dict[str, Any]:
    import resource
    mem: dict[str, Any] = {
        # ru_maxrss is in KiB on Linux
        "self_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "children_max_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                mem["torch_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        except Exception:
            pass
    if backend is not None:
        try:
            mem["backend_gb"] = backend.peak_memory_gb()
        except Exception:
            pass
    return mem


def synchronize(backend) -> None:
    """``backend.synchronize()``, except the base class's torch sync when the library never imported
    torch: there is no torch work to wait for, and importing torch (seconds, hundreds of MB) would be
    charged to a library that does not use it (llama.cpp)."""
    if type(backend).synchronize is Backend.synchronize and "torch" not in sys.modules:
        return
    backend.synchronize()


def warmup_requests(requests, cfg: dict) -> list[Request]:
    """``scenario.warmup_requests`` (default 1) short requests run untimed before the measured call, so
    one-off lazy initialisation (CUDA context, cuBLAS handles, kernel loading) is not charged to
    generation. Copies of the first requests with at most 2 output tokens; 0 turns it off."""
    from inference_eval.requests import Request
    n = (cfg.get("scenario") or {}).get("warmup_requests")
    n = DEFAULT_WARMUP_REQUESTS if n is None else int(n)
    return [Request(f"warmup-{r.id}", r.prompt_token_ids, min(2, r.max_tokens)) for r in requests[:max(0, n)]]


def run_job(job: dict, progress_path: str | None = None) -> dict[str, Any]:
    """Run the job; after each phase the partial result goes to ``progress_path`` so that the parent
    can tell, if this process dies outright, which phase it died in and what it had measured."""
    cfg = job["cfg"]
    files = ModelFiles(**job["files"])
    result: dict[str, Any] = {"status": "failed", "reason": "", "phase": "import"}
    backend = None
    phase = "import"
    spec = cfg["library"]["backend"]

    def reached(next_phase: str) -> str:
        result["phase"] = next_phase
        if progress_path:
            write_json(progress_path, result)
        return next_phase

    reached(phase)
    try:
        t0 = time.perf_counter()
        module = spec.partition(":")[0]
        try:
            cls = load_backend_class(spec)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name) and exc.name.startswith("inference_eval"):
                raise RuntimeError(f"no backend module {module!r} (library.backend = {spec!r})") from exc
            exc.status = "not_installed"  # the library the backend module imports is missing
            raise
        except AttributeError as exc:
            raise RuntimeError(f"backend class not found: library.backend = {spec!r}") from exc
        cls.check_available()
        result["import_time_s"] = time.perf_counter() - t0

        from inference_eval.batch_plan import batch_repeats, requests_from_job
        from inference_eval.requests import check_lengths
        phase = reached("dataset")
        requests = requests_from_job(job["requests"])

        phase = reached("load")
        t0 = time.perf_counter()
        backend = cls(cfg, files)
        backend.load()
        synchronize(backend)
        result["load_time_s"] = time.perf_counter() - t0
        result["versions"] = backend.versions()

        # Per-workload sizing a backend does before timing (Transformers' automatic batch size): untimed.
        t0 = time.perf_counter()
        backend.prepare(requests)
        synchronize(backend)
        result["prepare_time_s"] = time.perf_counter() - t0

        warmup = warmup_requests(requests, cfg)
        result["warmup_requests"] = len(warmup)  # for the record's account of how repeats were made
        if warmup:
            phase = reached("warmup")
            t0 = time.perf_counter()
            backend.generate(warmup)
            synchronize(backend)
            result["warmup_time_s"] = time.perf_counter() - t0

        # Untimed runs of the whole dataset: what a short warm-up request cannot reach (the device
        # allocator's first growth to the workload's size, kernels for its shapes) is paid here.
        full_warmups = batch_repeats(cfg, warmup=True)
        if full_warmups:
            phase = reached("warmup")
            t0 = time.perf_counter()
            for _ in range(full_warmups):
                backend.generate(requests)
            synchronize(backend)
            result["warmup_repeats_time_s"] = time.perf_counter() - t0
        result["warmup_repeats"] = full_warmups

        # Repeats: timed runs of the whole dataset in the same loaded engine, after the warm-up. Each
        # is checked; the first one with a wrong length ends the run (its reason is the record's).
        # Each repeat's GPU energy and telemetry (inference_eval.telemetry): NVML's energy counter read
        # at the window's ends, power and clocks sampled by a thread beside it; empty with the reason on CPU.
        repeats = batch_repeats(cfg)
        gpu = (cfg.get("hardware") or {}).get("kind") == "gpu"
        times: list[float] = []
        telemetry: list[dict] = []
        result["telemetry"] = telemetry
        for _ in range(repeats):
            phase = reached("generate")
            synchronize(backend)
            with GpuTelemetry(enabled=gpu) as window:
                t0 = time.perf_counter()
                completions = backend.generate(requests)
                synchronize(backend)
                times.append(time.perf_counter() - t0)
            telemetry.append(window.window.to_dict())
            phase = reached("check")
            check = check_lengths(requests, completions)
            if not check.valid:
                break
        result["repeats"] = repeats
        result["repeat_times_s"] = times
        result["total_time_s"] = sum(times) / len(times)
        result["requests"] = [{"id": c.id, "output_tokens": c.output_tokens, "error": c.error} for c in completions]
        result["n_exact"] = check.n_exact
        result["status"] = "ok" if check.valid else "invalid"
        result["reason"] = check.reason() + (f" (repeat {len(times)} of {repeats})" if not check.valid and repeats > 1 else "")
        result["backend_stats"] = dict(getattr(backend, "stats", {}) or {})
        result["resolved_settings"] = backend.resolved_settings()
    except Exception as exc:
        import traceback
        traceback.print_exc()
        result["status"] = classify(exc)
        result["reason"] = _reason(exc, phase)
    result["phase"] = phase
    result["memory"] = memory_snapshot(backend)
    if backend is not None:
        t0 = time.perf_counter()
        try:
            backend.close()
            result["close_time_s"] = time.perf_counter() - t0
        except Exception as exc:  # the numbers are in; a failing release is only noted
            result["close_error"] = f"{type(exc).__name__}: {exc}"
    return result


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m inference_eval.batch_worker JOB.json RESULT.json [PARENT_PID]", file=sys.stderr)
        return 2
    if len(argv) > 3:  # the harness's pid: end with it, so no library process outlives its run
        die_with_parent(int(argv[3]))
    with open(argv[1], encoding="utf-8") as fh:
        job = json.load(fh)
    result = run_job(job, progress_path=argv[2] + ".progress")
    result["written_at_monotonic"] = time.monotonic()  # CLOCK_MONOTONIC: the parent's clock too
    write_json(argv[2], result)
    # Skip the interpreter's teardown (a second or more with torch loaded): the backend is closed and
    # the result written; the harness reaps whatever the library left in this process group.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
