"""Per-rate serving metrics from the client's completions.

Goodput (``goodput_metrics``): of the measured requests, those that succeeded and met every latency
limit of the dataset's SLO (``scenario.slo``: TTFT, TPOT, optionally E2E, each judged per request);
``goodput_req_s``/``goodput_tok_s`` are their requests and output tokens over the measured window, and
``slo_*_met_share`` the share of measured requests meeting each limit (a failed request meets none).

The first and last ``drop_first``/``drop_last`` requests (in schedule order) are warm-up and drain and
are left out of the latency and throughput figures; failures are counted over all requests too.
Latency statistics cover successful requests only; failures are counted, never averaged in.

Definitions (times from the *scheduled* send time):
- e2e latency: end - scheduled; TTFT: first token - scheduled;
- TPOT: (end - first token) / (output tokens - 1), per request;
- ITL: gaps between consecutive streamed chunks, pooled over requests;
- mean latency per output token (the paper's): mean over requests of e2e / output tokens;
- sequence / token throughput: successful requests / their output tokens over the measured window
  (first measured scheduled time to last measured end);
- achieved rate: (measured requests - 1) / (last - first measured *send* time), against the nominal
  rate and the schedule's own realised rate (``scheduled_rate``); send lag: sent - scheduled.

Uncertainty (``CI_COLUMNS``): ``<metric>_ci_lo`` / ``<metric>_ci_hi`` are 95 % percentile-bootstrap
confidence intervals for token throughput and the p50 and p99 of TTFT, TPOT and e2e latency. The
measured, successful requests of the rate are resampled with replacement (``bootstrap`` resamples,
1000 by default, from ``numpy.random.default_rng(seed)``, so a row is reproducible); the statistic is
recomputed on each resample (a percentile of the resampled latencies; for throughput the resampled
output tokens summed over the *same* measured-window duration) and the interval is the 2.5th..97.5th
percentile of those values. With ``bootstrap=0`` or fewer than 2 successful measured requests the
intervals are NaN. Requests are resampled jointly (one index matrix) where a metric is defined for
every successful request.

What the intervals capture is sampling noise among the requests of *this one run*: which prompts,
output lengths and arrival gaps happened to be drawn. They do not capture run-to-run variation of the
server (warm-up state, scheduling, clocks, other load on the node, a different arrival schedule);
repeats of the whole sweep measure that, and the intervals here are narrower than that spread. The
throughput interval holds the request count and window fixed, so it only reflects variation in output
length among successful requests; with one fixed ``max_tokens`` it collapses to the point estimate.
Failures are not resampled (they are reported as counts).

``p99_reliable``: the 99th percentile of n requests is set by its ~n/100 slowest requests; with fewer
than ``P99_MIN_REQUESTS`` (100) successful measured requests it is an interpolation between the one or
two slowest requests, so it (and its bootstrap interval, which cannot reach beyond the slowest request
seen) says little about the tail. Rows with fewer carry ``p99_reliable = False``.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from inference_eval.requests import Completion

STATS = ("mean", "p50", "p90", "p99")
P99_MIN_REQUESTS = 100
CI_LEVEL = 0.95
# metrics with a bootstrap interval, in column order
CI_METRICS = ("token_throughput_tok_s", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "e2e_s_p50",
              "e2e_s_p99")
CI_COLUMNS = (*(f"{m}_ci_{side}" for m in CI_METRICS for side in ("lo", "hi")), "p99_reliable")


def _stats(prefix: str, values: Sequence[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {f"{prefix}_{s}": float("nan") for s in STATS}
    return {f"{prefix}_mean": float(arr.mean()), f"{prefix}_p50": float(np.percentile(arr, 50)),
            f"{prefix}_p90": float(np.percentile(arr, 90)), f"{prefix}_p99": float(np.percentile(arr, 99))}


def _percentile_ci(boot: np.ndarray) -> tuple[float, float]:
    """The central ``CI_LEVEL`` interval of bootstrap replicates (the percentile method)."""
    tail = 100 * (1 - CI_LEVEL) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_intervals(ok: Sequence[Completion], duration: float, bootstrap: int = 1000, seed: int = 0) -> dict:
    """``<metric>_ci_lo/_ci_hi`` for every metric in ``CI_METRICS`` (NaN where undefined)."""
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
    out = {f"{m}_ci_{side}": float("nan") for m in CI_METRICS for side in ("lo", "hi")}
    if bootstrap == 0 or len(ok) < 2:
        return out
    rng = np.random.default_rng(seed)
    indices: dict[int, np.ndarray] = {}

    def idx(n: int) -> np.ndarray:
        # one (B, n) index matrix per sample size, drawn in a fixed order: the common case (every metric
        # defined for every successful request) resamples the requests jointly with a single matrix
        if n not in indices:
            indices[n] = rng.integers(0, n, size=(bootstrap, n))
        return indices[n]

    tokens = np.fromiter((c.output_tokens for c in ok), dtype=float, count=len(ok))
    lo, hi = _percentile_ci(tokens[idx(tokens.size)].sum(axis=1) / duration)
    out["token_throughput_tok_s_ci_lo"], out["token_throughput_tok_s_ci_hi"] = lo, hi
    samples = {
        "ttft_s": [c.first_token_s - c.scheduled_s for c in ok if c.first_token_s],
        "tpot_s": [(c.end_s - c.first_token_s) / (c.output_tokens - 1)
                   for c in ok if c.output_tokens > 1 and c.first_token_s],
        "e2e_s": [c.end_s - c.scheduled_s for c in ok],
    }
    for prefix, values in samples.items():
        arr = np.asarray(values, dtype=float)
        if arr.size < 2:
            continue
        boot = np.percentile(arr[idx(arr.size)], [50, 99], axis=1)  # (2, B): p50 and p99 of each resample
        for q, reps in zip(("p50", "p99"), boot):
            out[f"{prefix}_{q}_ci_lo"], out[f"{prefix}_{q}_ci_hi"] = _percentile_ci(reps)
    return out


def error_kind(error: str) -> str:
    """The short class of an error message (``timeout``, ``HTTP 500``, ``bad stream``, ...)."""
    if not error:
        return ""
    head = error.split(":", 1)[0].strip()
    return head if len(head) <= 40 else head[:40]


def measured_window(completions: Sequence[Completion], drop_first: int, drop_last: int) -> list:
    order = sorted(completions, key=lambda c: c.scheduled_s)
    n = len(order)
    if drop_first + drop_last >= n:
        raise ValueError(f"cannot drop {drop_first} first and {drop_last} last of {n} requests: nothing left; "
                         f"lower drop_first/drop_last or raise num_requests")
    return order[drop_first:n - drop_last]


def rate_metrics(completions: Sequence[Completion], requested_rate: float, drop_first: int = 0,
                 drop_last: int = 0, *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """One row of the sweep CSV (metrics only; the caller adds library, model, status...).

    ``bootstrap`` resamples (0: no intervals, NaN columns) seeded with ``seed`` give the ``CI_COLUMNS``."""
    window = measured_window(completions, drop_first, drop_last)
    ok = [c for c in window if c.ok]
    failed_all = [c for c in completions if not c.ok]
    row: dict = {"requested_rate": requested_rate, "n_requests": len(completions), "n_measured": len(window),
                 "n_ok": len(ok), "n_failed": len(window) - len(ok), "n_failed_total": len(failed_all)}
    kinds = Counter(error_kind(c.error) or "length" for c in failed_all)
    row["failures"] = "; ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
    row["first_error"] = next((c.error for c in failed_all if c.error), "")

    t_start = min(c.scheduled_s for c in window)
    t_end = max(c.end_s for c in window)
    duration = max(t_end - t_start, 1e-9)
    out_tokens = sum(c.output_tokens for c in ok)
    row["duration_s"] = duration
    row["output_tokens"] = out_tokens
    row["sequence_throughput_req_s"] = len(ok) / duration
    row["token_throughput_tok_s"] = out_tokens / duration

    sched = sorted(c.scheduled_s for c in window)
    # the rate this finite seeded schedule actually asks for (Poisson noise is large for few requests)
    row["scheduled_rate"] = (len(sched) - 1) / (sched[-1] - sched[0]) if len(sched) > 1 and sched[-1] > sched[0] else float("nan")
    sent = sorted(c.sent_s for c in window if c.sent_s)
    row["achieved_rate"] = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 and sent[-1] > sent[0] else float("nan")
    row["achieved_over_requested"] = row["achieved_rate"] / requested_rate if np.isfinite(requested_rate) else float("nan")
    lag = [c.sent_s - c.scheduled_s for c in window if c.sent_s]
    row["send_lag_mean_s"] = float(np.mean(lag)) if lag else float("nan")
    row["send_lag_p50_s"] = float(np.percentile(lag, 50)) if lag else float("nan")
    row["send_lag_p99_s"] = float(np.percentile(lag, 99)) if lag else float("nan")
    row["send_lag_max_s"] = float(np.max(lag)) if lag else float("nan")

    e2e = [c.end_s - c.scheduled_s for c in ok]
    row["mean_latency_per_output_token_s"] = (float(np.mean([(c.end_s - c.scheduled_s) / c.output_tokens for c in ok]))
                                              if ok else float("nan"))
    row.update(_stats("e2e_s", e2e))
    row.update(_stats("ttft_s", [c.first_token_s - c.scheduled_s for c in ok if c.first_token_s]))
    row.update(_stats("tpot_s", [(c.end_s - c.first_token_s) / (c.output_tokens - 1)
                                 for c in ok if c.output_tokens > 1 and c.first_token_s]))
    itl = [g for c in ok for g in np.diff(c.token_times_s)] if ok else []
    row.update(_stats("itl_s", itl))
    row.update(bootstrap_intervals(ok, duration, bootstrap, seed))
    row["p99_reliable"] = len(ok) >= P99_MIN_REQUESTS
    return row


SLO_KEYS = ("ttft_s", "tpot_s", "e2e_s")
GOODPUT_COLUMNS = ("slo", "goodput_req_s", "goodput_tok_s", "slo_met_share",
                   *(f"slo_{k.removesuffix('_s')}_met_share" for k in SLO_KEYS))


def slo_for(cfg_scenario: dict, task: str) -> dict:
    """The latency limits of ``task`` from ``scenario.slo`` (``default``, then the task's own keys); a
    limit that is not a positive number or null is a config error naming the key."""
    table = (cfg_scenario or {}).get("slo") or {}
    limits = {k: None for k in SLO_KEYS}
    for source in ("default", task):
        entry = table.get(source) or {}
        unknown = set(entry) - set(SLO_KEYS)
        if unknown:
            raise ValueError(f"scenario.slo.{source}: unknown keys {sorted(unknown)}; valid: {', '.join(SLO_KEYS)}")
        limits.update(entry)
    for key, value in limits.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"scenario.slo limit {key} must be a positive number of seconds or null, got {value!r}")
    return {k: (None if v is None else float(v)) for k, v in limits.items()}


def _request_latencies(c: Completion) -> dict:
    tpot = ((c.end_s - c.first_token_s) / (c.output_tokens - 1)
            if c.output_tokens > 1 and c.first_token_s else 0.0)
    return {"ttft_s": (c.first_token_s - c.scheduled_s) if c.first_token_s else float("inf"),
            "tpot_s": tpot, "e2e_s": c.end_s - c.scheduled_s}


def goodput_metrics(completions: Sequence[Completion], slo: dict, drop_first: int = 0, drop_last: int = 0) -> dict:
    """Goodput of one rate under ``slo`` (from ``slo_for``) over the same measured window as ``rate_metrics``."""
    window = measured_window(completions, drop_first, drop_last)
    duration = max(max(c.end_s for c in window) - min(c.scheduled_s for c in window), 1e-9)
    met = {k: [] for k in SLO_KEYS}
    good = []
    for c in window:
        lat = _request_latencies(c) if c.ok else None
        flags = {k: bool(lat) and (slo.get(k) is None or lat[k] <= slo[k]) for k in SLO_KEYS}
        for k in SLO_KEYS:
            met[k].append(flags[k])
        if c.ok and all(flags.values()):
            good.append(c)
    n = len(window)
    row = {"slo": " ".join(f"{k}<={v:g}" for k, v in slo.items() if v is not None) or "none",
           "goodput_req_s": len(good) / duration, "goodput_tok_s": sum(c.output_tokens for c in good) / duration,
           "slo_met_share": len(good) / n}
    for k in SLO_KEYS:
        row[f"slo_{k.removesuffix('_s')}_met_share"] = sum(met[k]) / n if slo.get(k) is not None else float("nan")
    return row


def goodput_knee(rows: Sequence[dict], share: float) -> float:
    """The highest rate whose goodput (tokens/s) is at least ``share`` of its token throughput; NaN if none."""
    good = [r["rate"] for r in rows
            if r.get("status") in ("ok", "invalid") and r.get("token_throughput_tok_s")
            and r.get("goodput_tok_s", 0) >= share * r["token_throughput_tok_s"]]
    return max(good) if good else float("nan")


# The client certificate: whether the load generator, not the server, may have set a rate's pace.
CLIENT_COLUMNS = ("client_cpu_share", "client_limited", "client_limited_reason")
# One event loop runs the whole client: near a full core it cannot keep up with more.
CLIENT_CPU_LIMIT = 0.9
# Sends later than this (p99) and later than half the mean gap between sends mean the schedule slipped.
SEND_LAG_LIMIT_S = 0.005
# The achieved send rate under this share of the schedule's own rate means the client fell behind.
ACHIEVED_SHARE_LIMIT = 0.95


def client_certificate(row: dict, cpu_s: float, wall_s: float) -> dict:
    """``client_cpu_share`` (CPU seconds of the client process over the rate's wall time, in cores) and
    ``client_limited`` with the reasons, from that share and the row's send lag and achieved rate."""
    share = cpu_s / wall_s if wall_s > 0 else float("nan")
    reasons = []
    if share >= CLIENT_CPU_LIMIT:
        reasons.append(f"client CPU {share:.2f} of a core (limit {CLIENT_CPU_LIMIT})")
    rate = row.get("requested_rate")
    finite = isinstance(rate, (int, float)) and np.isfinite(rate)
    lag = row.get("send_lag_p99_s")
    if finite and lag is not None and np.isfinite(lag) and lag > max(SEND_LAG_LIMIT_S, 0.5 / rate):
        reasons.append(f"send lag p99 {lag * 1e3:.1f} ms (limit {max(SEND_LAG_LIMIT_S, 0.5 / rate) * 1e3:.1f} ms)")
    achieved, scheduled = row.get("achieved_rate"), row.get("scheduled_rate")
    if finite and achieved and scheduled and np.isfinite(achieved) and np.isfinite(scheduled) \
            and achieved < ACHIEVED_SHARE_LIMIT * scheduled:
        reasons.append(f"achieved {achieved:.1f} req/s of the schedule's {scheduled:.1f}")
    return {"client_cpu_share": share, "client_limited": bool(reasons), "client_limited_reason": "; ".join(reasons)}
