"""The dataset tables (the paper's Tables 2 and 3 in one): one row per library x model.

Every planned run gives a row: a library that failed or is missing shows its status and reason
(the paper's '-' cells), never a silent gap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from inference_eval import libraries
from inference_eval.fairness import gate
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
    "bound_s", "efficiency", "status", "reason", "comparability_reason", "prefix_caching", "batching",
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
            "record", "bound_s", "efficiency", "repeat_times_s", "repeat_note"}
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


def dataset_table(records: Iterable[str | Path], bounds: str | Path | None = None) -> pd.DataFrame:
    rows = [record_row(p) for p in records]
    flags = gate([r.pop("_manifest") for r in rows])
    for row, (comparable, reason) in zip(rows, flags):
        row["comparable"], row["comparability_reason"] = comparable, reason
    table = pd.DataFrame(rows)
    for col in TABLE_COLUMNS:
        if col not in table.columns:
            table[col] = None
    if bounds is not None and Path(bounds).exists():
        bound = pd.read_csv(bounds)[["model", "bound_s"]].drop_duplicates("model")
        table = table.drop(columns=["bound_s"]).merge(bound, on="model", how="left")
    ok = (table["status"] == "ok") & table["total_time_s"].notna() & table["bound_s"].notna()
    table["efficiency"] = None
    table.loc[ok, "efficiency"] = (table.loc[ok, "bound_s"].astype(float)
                                   / table.loc[ok, "total_time_s"].astype(float)).round(4)
    table = table[TABLE_COLUMNS].sort_values(["model", "library"], kind="stable").reset_index(drop=True)
    return table


def throughput_figure(tables: dict[str, pd.DataFrame], title: str):
    """Token throughput per library and dataset, with the 95 % interval over repeats as error bars.
    Failed runs are marked with their status; rows the gate found not comparable are hatched and named
    in a note under the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    frames = []
    for name, t in tables.items():
        t = t.copy()
        synthetic = "synthetic" in t and t["synthetic"].astype(str).str.lower().eq("true").any()
        t["dataset"] = f"{name} (synthetic)" if synthetic else name
        frames.append(t)
    data = pd.concat(frames, ignore_index=True)
    for col in ("token_throughput_ci95_lo_tok_s", "token_throughput_ci95_hi_tok_s", "comparable", "comparability_reason"):
        if col not in data:
            data[col] = None  # tables made before intervals and the gate existed
    data["tok_s"] = pd.to_numeric(data["token_throughput_tok_s"], errors="coerce").where(data["status"] == "ok")
    data["run"] = data["library_label"].astype(str) + " / " + data["model"].astype(str)
    order = list(dict.fromkeys(data["dataset"]))
    runs = list(dict.fromkeys(data["run"]))
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.5 * len(tables) * len(runs))), 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    not_comparable = []
    for i, run in enumerate(runs):
        sub = data[data["run"] == run]
        xs = [order.index(d) - 0.4 + width * (i + 0.5) for d in sub["dataset"]]
        ys = sub["tok_s"].to_numpy(dtype=float)
        lo = pd.to_numeric(sub["token_throughput_ci95_lo_tok_s"], errors="coerce").to_numpy(dtype=float)
        hi = pd.to_numeric(sub["token_throughput_ci95_hi_tok_s"], errors="coerce").to_numpy(dtype=float)
        err = np.vstack([np.where(np.isnan(lo), 0, ys - lo), np.where(np.isnan(hi), 0, hi - ys)])
        err = np.nan_to_num(np.clip(err, 0, None))
        flagged = sub["comparable"].astype(str).str.lower().eq("false").to_numpy()
        colour = colours[i % len(colours)]
        labelled = False
        for x, y, e0, e1, bad in zip(xs, ys, err[0], err[1], flagged):
            if np.isnan(y):
                continue
            ax.bar(x, y, width=width, color=colour, alpha=0.45 if bad else 1.0, hatch="//" if bad else None,
                   edgecolor="dimgray" if bad else colour, label=None if labelled else run)
            labelled = True
            if e0 or e1:
                ax.errorbar(x, y, yerr=[[e0], [e1]], color="black", capsize=3, linewidth=1)
        for (_, r), bad in zip(sub.iterrows(), flagged):
            if bad:
                not_comparable.append(f"{r['dataset']} {run}: {str(r['comparability_reason'])[:110]}")
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("dataset")
    ax.set_ylabel("output tokens / s (batch)")
    positive = data["tok_s"].dropna()
    positive = positive[positive > 0]
    if len(positive) and positive.max() / positive.min() > 50:
        ax.set_yscale("log")  # libraries differ by orders of magnitude on small models
    ax.set_title(title)
    for _, r in data[data["status"] != "ok"].iterrows():
        x = order.index(r["dataset"]) - 0.4 + width * (runs.index(r["run"]) + 0.5)
        ax.text(x, ax.get_ylim()[0], str(r["status"]), rotation=90, ha="center", va="bottom", fontsize=7, color="dimgray")
    ax.legend(fontsize=7, loc="upper right")
    notes = ["error bars: 95 % Student-t interval over repeats (none where a row ran once)"]
    if not_comparable:
        notes.append("hatched: NOT comparable with the other rows of its dataset (fairness gate):")
        notes += [f"  {n}" for n in not_comparable[:12]]
    fig.text(0.01, 0.0, "\n".join(notes), fontsize=7, va="top", ha="left")
    fig.tight_layout()
    return fig
