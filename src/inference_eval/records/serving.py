"""The serving row: one request rate of a sweep, one row of ``results/<hw>/serving/<library>_<model>_<dataset>.csv``.

``ServingRow``'s fields, in order, are the one definition of that CSV's columns (``serving.sweep.COLUMNS``
is ``ServingRow.columns()``): a key the sweep writes that is not a field would be left out of the CSV."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from inference_eval.records.base import Record, RecordError, blank_cell

NAN = math.nan
Number = float  # a CSV cell read back: counts too are floats where the column holds a missing value


@dataclass
class ServingRow(Record):
    """One request rate of a serving sweep (``inference_eval.serving.sweep.run_sweep``). Definitions of the
    metrics: ``inference_eval.serving.metrics``. Numbers are NaN, texts and flags None, where the rate did
    not run (a failed server) or the sweep predates the column.

    Identity and outcome: ``library``, ``model``, ``dataset``, ``dataset_source``, ``hardware``, ``rate``
    (requested requests/s; ``inf`` sends all at once; NaN on the one row of a sweep that never ran),
    ``status`` (ok | invalid | failed | not_installed), ``reason``.

    Load: ``requested_rate``, ``scheduled_rate`` (the seeded schedule's own rate), ``achieved_rate`` and
    ``achieved_over_requested`` (from send times), ``n_requests``, ``n_measured`` (after the warm-up and
    drain requests are dropped), ``n_ok``, ``n_failed`` (measured), ``n_failed_total`` (all),
    ``failures`` (kinds with counts), ``first_error``, ``duration_s`` (the measured window).

    Throughput and latency: ``output_tokens``, ``sequence_throughput_req_s``, ``token_throughput_tok_s``,
    ``mean_latency_per_output_token_s``; ``ttft_s_*``, ``tpot_s_*``, ``itl_s_*``, ``e2e_s_*`` as mean,
    p50, p90, p99 (seconds, from the scheduled send time); ``send_lag_*_s`` (sent - scheduled).

    Uncertainty: ``<metric>_ci_lo`` / ``_ci_hi``, the 95 % bootstrap interval over the rate's requests, for
    token throughput and the p50 and p99 of TTFT, TPOT and E2E; ``p99_reliable`` (at least 100 measured
    successful requests).

    Goodput under the dataset's SLO (``scenario.slo``): ``slo`` (the limits as text), ``goodput_req_s``,
    ``goodput_tok_s``, ``slo_met_share`` and per limit ``slo_<ttft|tpot|e2e>_met_share``;
    ``within_goodput_share`` (goodput at least ``scenario.goodput_share`` of throughput).

    Rate search: ``search_phase`` (fixed, grow, bisect, inf), ``search_note`` (on the last row: why the
    search stopped); ``scale_note`` (set when the schedule is smaller than the hardware profile's
    ``scale.serving_requests``: the reduced scale, stated on every row). Client certificate: ``client_cpu_share``, ``client_limited`` and
    ``client_limited_reason`` (the load generator, not the server, set the pace). Energy over the whole
    rate (``inference_eval.telemetry``, NVML's counter on GPUs): ``energy_j``, ``energy_j_per_token`` (over
    every completed request's output tokens), ``mean_power_w``, ``energy_reason`` (why empty),
    ``gpu_sm_clock_mhz_mean``, ``gpu_memory_used_gib_max``, ``gpu_util_mean``, ``telemetry_samples``.

    Fairness manifest columns (``inference_eval.fairness``): ``requests_sha256``, ``row_limit``,
    ``max_tokens_cap``, ``exact``, ``prefix_caching``, the measured ``prefix_cache_hit_rate`` of the rate
    with ``prefix_cache_hit_tokens``, ``prefix_cache_query_tokens`` and ``prefix_cache_source``,
    ``sampling``, ``prompt_route`` and ``engine_settings`` (the effective settings as JSON).
    """

    library: str | None = None
    model: str | None = None
    dataset: str | None = None
    dataset_source: str | None = None
    hardware: str | None = None
    rate: float = NAN
    status: str | None = None
    reason: str | None = None
    requested_rate: float = NAN
    scheduled_rate: float = NAN
    achieved_rate: float = NAN
    achieved_over_requested: float = NAN
    n_requests: Number = NAN
    n_measured: Number = NAN
    n_ok: Number = NAN
    n_failed: Number = NAN
    n_failed_total: Number = NAN
    failures: str | None = None
    first_error: str | None = None
    duration_s: float = NAN
    output_tokens: Number = NAN
    sequence_throughput_req_s: float = NAN
    token_throughput_tok_s: float = NAN
    mean_latency_per_output_token_s: float = NAN
    ttft_s_mean: float = NAN
    ttft_s_p50: float = NAN
    ttft_s_p90: float = NAN
    ttft_s_p99: float = NAN
    tpot_s_mean: float = NAN
    tpot_s_p50: float = NAN
    tpot_s_p90: float = NAN
    tpot_s_p99: float = NAN
    itl_s_mean: float = NAN
    itl_s_p50: float = NAN
    itl_s_p90: float = NAN
    itl_s_p99: float = NAN
    e2e_s_mean: float = NAN
    e2e_s_p50: float = NAN
    e2e_s_p90: float = NAN
    e2e_s_p99: float = NAN
    send_lag_mean_s: float = NAN
    send_lag_p50_s: float = NAN
    send_lag_p99_s: float = NAN
    send_lag_max_s: float = NAN
    token_throughput_tok_s_ci_lo: float = NAN
    token_throughput_tok_s_ci_hi: float = NAN
    ttft_s_p50_ci_lo: float = NAN
    ttft_s_p50_ci_hi: float = NAN
    ttft_s_p99_ci_lo: float = NAN
    ttft_s_p99_ci_hi: float = NAN
    tpot_s_p50_ci_lo: float = NAN
    tpot_s_p50_ci_hi: float = NAN
    tpot_s_p99_ci_lo: float = NAN
    tpot_s_p99_ci_hi: float = NAN
    e2e_s_p50_ci_lo: float = NAN
    e2e_s_p50_ci_hi: float = NAN
    e2e_s_p99_ci_lo: float = NAN
    e2e_s_p99_ci_hi: float = NAN
    p99_reliable: bool | None = None
    slo: str | None = None
    goodput_req_s: float = NAN
    goodput_tok_s: float = NAN
    slo_met_share: float = NAN
    slo_ttft_met_share: float = NAN
    slo_tpot_met_share: float = NAN
    slo_e2e_met_share: float = NAN
    within_goodput_share: bool | None = None
    search_phase: str | None = None
    search_note: str | None = None
    scale_note: str | None = None
    client_cpu_share: float = NAN
    client_limited: bool | None = None
    client_limited_reason: str | None = None
    energy_j: float = NAN
    energy_j_per_token: float = NAN
    mean_power_w: float = NAN
    energy_reason: str | None = None
    gpu_sm_clock_mhz_mean: float = NAN
    gpu_memory_used_gib_max: float = NAN
    gpu_util_mean: float = NAN
    telemetry_samples: Number = NAN
    requests_sha256: str | None = None
    row_limit: Number | None = None
    max_tokens_cap: Number | None = None
    exact: bool | None = None
    prefix_caching: bool | None = None
    prefix_cache_hit_rate: float = NAN
    prefix_cache_hit_tokens: float = NAN
    prefix_cache_query_tokens: float = NAN
    prefix_cache_source: str | None = None
    sampling: str | None = None
    prompt_route: str | None = None
    engine_settings: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _check(cls, data, source: str) -> None:
        if "status" not in data:
            raise RecordError(f"{source}: not a serving row (no status)")

    @property
    def ran(self) -> bool:
        """Whether the rate produced numbers (status ok or invalid)."""
        return self.status in ("ok", "invalid")

    @property
    def has_manifest(self) -> bool:
        """Whether the row carries a fairness manifest: the comparability gate's test
        (``fairness.manifest_from_row``), the requests' sha256, which every row written since the
        manifest columns exist has and every row made before them lacks."""
        return not blank_cell(self.requests_sha256)


def sweep_made_before_manifest(rows: Sequence[ServingRow]) -> bool:
    """Whether a sweep predates the fairness manifest: none of the rates that ran carries one (a sweep
    where no rate ran says nothing either way, and counts as made before)."""
    return not any(r.has_manifest for r in rows if r.ran)


def read_sweep(path: str | Path) -> list[ServingRow]:
    """The rows of a sweep CSV, each checked (``RecordVersionError`` naming the file and row for an
    unknown schema version). A SLURM failure record in place of the CSV gives its one row."""
    return [ServingRow.from_dict(row, source=f"{path} row {i + 1}") for i, row in enumerate(_rows(path))]


def rows_frame(rows: Iterable[ServingRow]):
    """The rows as the sweep CSV holds them: ``ServingRow.columns()`` in order (extras left out)."""
    import pandas as pd

    return pd.DataFrame([r.to_dict() for r in rows]).reindex(columns=list(ServingRow.columns()))


def _rows(path: str | Path) -> Sequence[dict]:
    from inference_eval.slurm_failures import read_table

    return read_table(path).to_dict("records")
