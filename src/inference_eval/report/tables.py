"""The dataset tables (the paper's Tables 2 and 3 in one): one row per library x model.

Every planned run gives a row: a library that failed or is missing shows its status and reason
(the paper's '-' cells), never a silent gap. A table of several models holds one group of rows per
model (sorted by model, then library): the fairness gate compares rows within their model's group, and
each row's roofline bound and efficiency are its own model's (``bound_reason`` says why a row has none).
The throughput figure over these tables is ``inference_eval.report.batch_figures``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from inference_eval import libraries
from inference_eval.fairness import gate_groups
from inference_eval.records import BatchRecord

TABLE_COLUMNS = [
    # first: whether the row may be read beside the others (inference_eval.fairness.gate), and why not
    "comparable",
    "library", "library_label", "model", "dataset", "dataset_source", "synthetic", "hardware",
    "n_requests", "dataset_rows", "input_tokens", "requested_output_tokens", "output_tokens", "n_exact",
    "total_time_s", "total_time_ci95_lo_s", "total_time_ci95_hi_s", "total_time_cv", "repeats", "repeat_times_s",
    "repeat_note",
    "token_throughput_tok_s", "token_throughput_ci95_lo_tok_s", "token_throughput_ci95_hi_tok_s",
    "requests_per_s", "load_time_s", "peak_memory_gb",
    # GPU energy over the timed repeats (NVML's counter; inference_eval.telemetry), empty with the reason
    "energy_j_per_token", "mean_power_w", "energy_reason",
    "bound_s", "efficiency", "bound_reason", "status", "reason", "comparability_reason", "prefix_caching", "batching",
    "config_hash", "record",
]


def library_label(name: str | None, provenance: dict | None) -> str:
    """A record's library label: the package registry's (conf/library/<name>.yaml), else the label its
    own config carries (a library from a conf_path folder), else the library's name."""
    name = str(name or "")
    own = (((provenance or {}).get("config") or {}).get("library") or {}).get("label")
    return libraries.label(name, default=str(own) if own else name)


# Columns derived in record_row or dataset_table; the others are the record's fields of the same name.
_DERIVED = {"comparable", "comparability_reason", "prefix_caching", "batching", "library_label", "config_hash",
            "record", "bound_s", "efficiency", "bound_reason", "repeat_times_s", "repeat_note"}
_RECORD_COLUMNS = [c for c in TABLE_COLUMNS if c not in _DERIVED]
# Repeats whose times vary by more than this (coefficient of variation) are called out in repeat_note.
UNSTABLE_CV = 0.10


def repeat_note(times: list[float]) -> str:
    """Why a row's interval is wide: its repeats disagree (and whether the first one is the outlier)."""
    if len(times) < 2:
        return ""
    from inference_eval.report.uncertainty import coefficient_of_variation

    cv = coefficient_of_variation(times)
    if not cv > UNSTABLE_CV:
        return ""
    note = f"unstable: CV {cv:.0%} over {len(times)} repeats"
    rest = times[1:]
    if times[0] > max(rest):
        note += (f"; the first took {times[0] / (sum(rest) / len(rest)):.1f}x the mean of the others "
                 f"(a cold start the warm-up did not cover)")
    return note


def _manifest_for_gate(rec: BatchRecord) -> dict | None:
    """The record's fairness manifest for the gate: a row without a result has nothing to compare."""
    if not rec.has_result:
        return {"no_result": True}
    return rec.fairness


def record_row(path: str | Path) -> dict:
    """One table row from a batch record (``records.BatchRecord``; a SLURM failure record reads as one).
    An unreadable file is a failed row naming it; a record of an unknown schema version raises."""
    path = Path(path)
    try:
        rec = BatchRecord.load(path)
    except (OSError, json.JSONDecodeError) as exc:
        return {"status": "failed", "reason": f"unreadable record {path}: {exc}", "record": str(path),
                "_manifest": {"no_result": True}}
    row = {k: getattr(rec, k) for k in _RECORD_COLUMNS}
    row["library_label"] = library_label(rec.library, rec.provenance)
    row["config_hash"] = rec.provenance.get("config_hash")
    row["record"] = str(path)
    row["prefix_caching"] = rec.settings.get("prefix_caching")
    row["batching"] = rec.settings.get("batching")
    times = [float(t) for t in rec.repeat_times_s]
    row["repeat_times_s"] = " ".join(f"{t:.4g}" for t in times)
    row["repeat_note"] = repeat_note(times)
    if rec.energy_reason is None:
        row["energy_reason"] = "not measured: the record predates energy telemetry"
    row["_manifest"] = _manifest_for_gate(rec)
    return row


def _bound_rows(bounds: str | Path | None) -> tuple[pd.DataFrame | None, str]:
    """The bound table's rows per model (first row of each), or None with the reason there is none."""
    if bounds is None:
        return None, "no roofline bound table was given"
    if not Path(bounds).exists():
        return None, f"no roofline bound table: {bounds} is missing"
    frame = pd.read_csv(bounds)
    for col in ("status", "reason"):
        if col not in frame:
            frame[col] = None
    return frame[["model", "bound_s", "status", "reason"]].drop_duplicates("model"), ""


def _bound_reason(model, bound_row: dict | None, missing: str, bounds, bounded: list) -> str:
    """Why a row has no bound: the table is missing, has no row for its model (``bounded``: the models
    it has), or its bound failed."""
    if missing:
        return missing
    if bound_row is None:
        return f"no roofline bound for {model} in {Path(bounds).name} (it bounds {', '.join(map(str, bounded)) or 'no model'})"
    if pd.isna(bound_row.get("bound_s")):
        status, reason = bound_row.get("status"), bound_row.get("reason")
        reason = "" if pd.isna(reason) else f": {reason}"
        return f"roofline bound {'not computed' if pd.isna(status) else status}{reason}"
    return ""


def dataset_table(records: Iterable[str | Path], bounds: str | Path | None = None) -> pd.DataFrame:
    """One dataset's table: a row per record (``record_row``), gated within each model's rows
    (``fairness.gate_groups``), with each model's roofline bound from ``bounds`` (a
    ``<dataset>_bound.csv``, one row per model) and the efficiency bound / time."""
    rows = [record_row(p) for p in records]
    flags = gate_groups([r.pop("_manifest") for r in rows], [r.get("model") for r in rows])
    for row, (comparable, reason) in zip(rows, flags):
        row["comparable"], row["comparability_reason"] = comparable, reason
    table = pd.DataFrame(rows)
    for col in TABLE_COLUMNS:
        if col not in table.columns:
            table[col] = None
    bound, missing = _bound_rows(bounds)
    by_model = {} if bound is None else {m: r for m, r in zip(bound["model"], bound.to_dict("records"))}
    if bound is not None:
        table = table.drop(columns=["bound_s"]).merge(bound[["model", "bound_s"]], on="model", how="left")
    table["bound_reason"] = [_bound_reason(m, by_model.get(m), missing, bounds, list(by_model))
                             for m in table["model"]]
    ok = (table["status"] == "ok") & table["total_time_s"].notna() & table["bound_s"].notna()
    table["efficiency"] = None
    table.loc[ok, "efficiency"] = (table.loc[ok, "bound_s"].astype(float)
                                   / table.loc[ok, "total_time_s"].astype(float)).round(4)
    table = table[TABLE_COLUMNS].sort_values(["model", "library"], kind="stable").reset_index(drop=True)
    return table
