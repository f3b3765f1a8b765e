"""One request rate of a serving sweep: the load generator over the whole schedule, with the server's
prefix-cache counters read before and after and the GPU's energy over the window; the per-request CSV
and the rate's row (status, metrics, goodput, client certificate, energy, prefix-cache reuse)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from inference_eval.io import write_csv
from inference_eval.requests import completion_to_row
from inference_eval.serving.client import LoadSettings, ServedCompletion, run_load
from inference_eval.serving.launch import ServerError, ServerProcess
from inference_eval.serving.metrics import client_certificate, goodput_metrics, rate_metrics
from inference_eval.serving.schedule import make_schedule
from inference_eval.serving.sweep_settings import ServingSettings
from inference_eval.telemetry import GpuTelemetry, TelemetryWindow, energy_summary


def _request_rows(completions: Sequence[ServedCompletion], rate: float) -> pd.DataFrame:
    rows = []
    for c in completions:
        row = completion_to_row(c)
        row["rate"] = rate
        row["send_lag_s"] = c.sent_s - c.scheduled_s if c.sent_s else float("nan")
        row["token_times_s"] = " ".join(f"{t:.6f}" for t in c.token_times_s)
        rows.append(row)
    return pd.DataFrame(rows)


def _rate_status(completions: Sequence[ServedCompletion]) -> tuple[str, str]:
    bad = [c for c in completions if not c.ok]
    if not bad:
        return "ok", ""
    status = "failed" if len(bad) == len(completions) else "invalid"
    first = next((c.error for c in bad if c.error), "wrong length")
    return status, f"{len(bad)}/{len(completions)} requests failed or had the wrong length; first: {first}"



def prefix_cache_share(before, after, prompt_tokens_sent: int) -> dict:
    """This rate's prompt tokens served from the server's prefix cache, from cumulative counters read
    before and after it (the denominator: the server's own lookups, else the prompt tokens we sent)."""
    if before is None or after is None:
        return {"prefix_cache_hit_rate": float("nan"), "prefix_cache_hit_tokens": float("nan"),
                "prefix_cache_query_tokens": float("nan"), "prefix_cache_source": "not reported by this server"}
    hits = after.hit_tokens - before.hit_tokens
    queried = None
    if after.queried_tokens is not None and before.queried_tokens is not None:
        queried = after.queried_tokens - before.queried_tokens
    if not queried:  # hits only, or no lookups counted (vLLM with caching off): over the prompts sent
        queried = float(prompt_tokens_sent)
    return {"prefix_cache_hit_rate": hits / queried if queried > 0 else float("nan"),
            "prefix_cache_hit_tokens": hits, "prefix_cache_query_tokens": queried,
            "prefix_cache_source": after.source}


def measure_rate(rate: float, requests, body_for, load: LoadSettings, settings: ServingSettings,
              server: ServerProcess, run_dir: Path, ident: dict, counters=None, slo: dict | None = None) -> dict:
    if not server.alive():
        raise ServerError(f"server exited with code {server.returncode()} before rate {rate:g}: "
                          f"{server.log_tail(300)!r}")
    spec, api_key = counters if counters else (None, None)

    def read_counters():
        return spec.prefix_cache_counters(server.base_url, server.log_path, api_key) if spec else None

    schedule = make_schedule(len(requests), rate, settings.arrival, settings.burstiness, settings.seed)
    before = read_counters()
    cpu0, wall0 = time.process_time(), time.perf_counter()  # the client's own CPU (the server is another process)
    with GpuTelemetry(enabled=settings.gpu) as telemetry:  # the whole rate, every request of it
        completions = run_load(requests, schedule, body_for, load)
    client_cpu_s, client_wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    cache = prefix_cache_share(before, read_counters(), sum(r.prompt_len for r in requests))
    write_csv(run_dir / f"requests_rate{rate:g}.csv", _request_rows(completions, rate))
    status, reason = _rate_status(completions)
    if not server.alive():
        status = "failed" if status == "failed" else "invalid"
        reason = f"server exited with code {server.returncode()} during this rate; " + reason
    metrics = rate_metrics(completions, rate, settings.drop_first, settings.drop_last, seed=settings.seed)
    if slo is not None:
        metrics.update(goodput_metrics(completions, slo, settings.drop_first, settings.drop_last))
    metrics.update(client_certificate(metrics, client_cpu_s, client_wall_s))
    metrics.update(rate_energy(telemetry.window, sum(c.output_tokens for c in completions if c.ok)))
    return {**ident, "rate": rate, "status": status, "reason": reason, **metrics, **cache}


def rate_energy(window: TelemetryWindow, output_tokens: int) -> dict:
    """A rate's energy columns: the window spans every request of the rate (the dropped warm-up and
    cool-down ones too), so joules per token divide by every completed request's output tokens."""
    w = window.to_dict()
    out = energy_summary([w], output_tokens)
    out.update({"gpu_sm_clock_mhz_mean": w["sm_clock_mhz_mean"], "gpu_memory_used_gib_max": w["memory_used_gib_max"],
                "gpu_util_mean": w["gpu_util_mean"], "telemetry_samples": w["samples"]})
    return out
