"""Building a batch run's record (``records.BatchRecord``) and its per-request CSV from the plan and the
worker's result."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from inference_eval import fairness
from inference_eval.batch_plan import BatchPlan
from inference_eval.batch_watch import SAMPLE_S
from inference_eval.io import atomic_path
from inference_eval.records import BatchRecord
from inference_eval.report.uncertainty import coefficient_of_variation, mean_ci95
from inference_eval.requests import Request, run_limits
from inference_eval.telemetry import energy_summary

REQUEST_COLUMNS = ["id", "prompt_tokens", "requested", "output_tokens", "ok", "error"]


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
    """One row per planned request (``REQUEST_COLUMNS``): what the worker reported for it, or why not."""
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


def build_record(cfg: Mapping[str, Any], plan: BatchPlan, result: Mapping[str, Any],
                 rows: Sequence[Mapping[str, Any]], prov: dict[str, Any]) -> BatchRecord:
    """The run's record: counts from the planned requests and the per-request rows, times and memory from
    the worker's result, the fairness manifest, ``prov`` as its provenance."""
    requests, manifest = plan.requests, plan.manifest
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
    windows = list(result.get("telemetry") or [])
    energy = energy_summary(windows if ran else [{"reason": "no timed run"}], output_tokens)
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
    return BatchRecord(
        kind="batch",
        library=cfg["library"]["name"],
        model=cfg["model"]["name"],
        dataset=dataset_cfg.get("name"),
        dataset_member=plan.member,
        dataset_source=manifest.get("source", dataset_cfg.get("source")),
        synthetic=bool(manifest.get("synthetic", dataset_cfg.get("synthetic", False))),
        hardware=cfg["hardware"]["name"],
        status=status,
        reason=result.get("reason") or "",
        n_requests=len(requests),
        dataset_rows=plan.dataset_rows,
        input_tokens=sum(r.prompt_len for r in requests),
        requested_output_tokens=sum(r.max_tokens for r in requests),
        output_tokens=output_tokens,
        n_exact=n_exact,
        total_time_s=total,
        repeats=len(times),
        repeat_times_s=times,
        total_time_ci95_lo_s=time_lo if ran else None,
        total_time_ci95_hi_s=time_hi if ran else None,
        total_time_cv=cv if ran and not math.isnan(cv) else None,
        token_throughput_ci95_lo_tok_s=(output_tokens / time_hi) if ran and time_hi else None,
        token_throughput_ci95_hi_tok_s=(output_tokens / time_lo) if ran and time_lo and time_lo > 0 else None,
        load_time_s=result.get("load_time_s"),
        token_throughput_tok_s=(output_tokens / total) if ran else None,
        requests_per_s=(len(requests) / total) if ran else None,
        peak_memory_gb=mem_gb,
        peak_memory_kind=mem_kind,
        row_limit=limit,
        max_tokens_cap=cap,
        import_time_s=result.get("import_time_s"),
        warmup_time_s=result.get("warmup_time_s"),
        warmup_repeats=result.get("warmup_repeats", 0),
        warmup_repeats_time_s=result.get("warmup_repeats_time_s"),
        close_time_s=result.get("close_time_s"),
        exit_time_s=result.get("exit_time_s"),
        worker_wall_s=result.get("worker_wall_s"),
        worker_exit=result.get("worker_exit"),
        failed_phase=result.get("phase") if status not in ("ok", "invalid") else None,
        library_versions=result.get("versions") or {},
        backend_stats=result.get("backend_stats") or {},
        prepare_time_s=result.get("prepare_time_s"),
        **energy,
        telemetry=windows,
        fairness=fair,
        provenance=prov,
    )
