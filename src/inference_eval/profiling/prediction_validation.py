"""How close predictions for unmeasured hardware (``profiling.prediction_model``) came to what the target
hardware measured: per op and stage (``validate_modules``), per batch row (``validate_batch``), the error
summary (``mape_table``) and the predicted-against-measured figure (``validation_figure``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from inference_eval.opnames import OPS
from inference_eval.profiling.prediction_model import (
    OK,
    OP_LEVEL,
    SHAPE_KEYS,
    STAGE_LEVEL,
    STAGE_OP,
    TIME_COLUMN,
    VALIDATION,
    number,
    record_batching,
)


def _errors(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["error"] = frame["predicted_time_s"] / frame["measured_time_s"] - 1.0
    frame["ape"] = frame["error"].abs()
    frame["unchanged_ape"] = (frame["source_time_s"] / frame["measured_time_s"] - 1.0).abs()
    return frame


def measured_modules(modules: pd.DataFrame) -> pd.DataFrame:
    """Measured op and stage times of the target's module tables, per shape (mean over the sweeps that
    hold the same shape), with the target's achieved fraction of the roofline per op."""
    ok = modules[modules["status"] == OK] if "status" in modules else modules
    ok = ok[ok["op"].isin(OPS)]
    if ok.empty:
        return pd.DataFrame(columns=[*SHAPE_KEYS, "op", "level", "measured_time_s", "target_fraction"])
    ops = ok.groupby([*SHAPE_KEYS, "op"], sort=False).agg(
        measured_time_s=(TIME_COLUMN, "mean"),
        target_fraction=("achieved_fraction", "mean") if "achieved_fraction" in ok else (TIME_COLUMN, lambda v: np.nan),
        n_ops=("op", "size")).reset_index().assign(level=OP_LEVEL)
    per_sweep = ok.groupby([*SHAPE_KEYS, "sweep"] if "sweep" in ok else SHAPE_KEYS, sort=False).agg(
        t=(TIME_COLUMN, "sum"), n=("op", "nunique")).reset_index()
    per_sweep = per_sweep[per_sweep["n"] == len(OPS)]
    stages = per_sweep.groupby(SHAPE_KEYS, sort=False).agg(measured_time_s=("t", "mean")).reset_index()
    stages = stages.assign(level=STAGE_LEVEL, op=STAGE_OP, target_fraction=np.nan)
    return pd.concat([ops.drop(columns="n_ops"), stages], ignore_index=True)


def validate_modules(predicted: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """One row per (library, stage, shape, op or stage total) that both the prediction and the target's
    own measurement hold: predicted and measured time, signed and absolute relative error, and the error
    of predicting the source's time unchanged (``unchanged_ape``), for scale."""
    pred = predicted[(predicted["status"] == OK) & predicted["predicted_time_s"].notna()]
    if pred.empty or measured.empty:
        return pd.DataFrame(columns=VALIDATION_MODULE_COLUMNS)
    keys = [*SHAPE_KEYS, "level", "op"]
    agg = pred.groupby(keys, sort=False).agg(
        predicted_time_s=("predicted_time_s", "mean"), source_time_s=("source_time_s", "mean"),
        source_fraction=("source_fraction", "mean"), regime=("regime", "first"),
        crosses_ridge=("crosses_ridge", "any"), crossing_ops=("crossing_ops", "first"),
        intensity=("intensity", "first"), source_hardware=("source_hardware", "first"),
        hardware=("hardware", "first"), method=("method", "first")).reset_index()
    joined = agg.merge(measured_modules(measured), on=keys, how="inner")
    joined = _errors(joined).assign(kind=VALIDATION)
    order = {op: i for i, op in enumerate((*OPS, STAGE_OP))}
    joined = joined.assign(_o=joined["op"].map(order)).sort_values(["library", "stage", "level", "b", "s", "_o"])
    return joined.drop(columns="_o").reindex(columns=VALIDATION_MODULE_COLUMNS).reset_index(drop=True)


VALIDATION_MODULE_COLUMNS = ["kind", "method", "source_hardware", "hardware", "library", "model", "stage", "level",
                             "op", "b", "s", "predicted_time_s", "measured_time_s", "source_time_s", "error", "ape",
                             "unchanged_ape", "regime", "crosses_ridge", "crossing_ops", "intensity",
                             "source_fraction", "target_fraction"]
VALIDATION_BATCH_COLUMNS = ["kind", "method", "source_hardware", "hardware", "dataset", "library", "model",
                            "predicted_time_s", "measured_time_s", "source_time_s", "error", "ape", "unchanged_ape",
                            "comparable", "comparability_reason", "source_batching", "target_batching",
                            "measured_ci95_lo_s", "measured_ci95_hi_s", "measured_repeats", "target_record"]


def validate_batch(predicted: pd.DataFrame, target_tables: Mapping[str, pd.DataFrame],
                   records: Callable[[str], Mapping[str, Any] | None] = lambda path: None) -> pd.DataFrame:
    """One row per predicted (dataset, library, model) that the target also measured (status ok).

    ``comparable`` is true only when both sides ran the library with the same batching (from the
    records' fairness manifests, or their recorded configs): a time measured with static batches of 8
    says nothing about one with a batch of 200, and such a pair is kept out of the error summary."""
    pred = predicted[predicted["status"] == OK]
    rows = []
    for p in pred.to_dict("records"):
        table = target_tables.get(p["dataset"])
        if table is None:
            continue
        match = table[(table["library"] == p["library"]) & (table["model"] == p["model"]) & (table["status"] == OK)]
        if match.empty:
            continue
        m = match.iloc[0].to_dict()
        rec_path = str(m.get("record") or "")
        batching, _ = record_batching(records(rec_path) if rec_path else None)
        src_batching = str(p.get("source_batching") or "")
        if not batching or not src_batching:
            comparable, why = False, "batching unknown on " + (p["source_hardware"] if not src_batching else p["hardware"])
        elif batching != src_batching:
            comparable, why = False, f"batching differs: {src_batching} ({p['source_hardware']}) vs {batching} ({p['hardware']})"
        else:
            comparable, why = True, ""
        rows.append({"dataset": p["dataset"], "library": p["library"], "model": p["model"],
                     "predicted_time_s": p["predicted_total_time_s"], "measured_time_s": number(m.get("total_time_s")),
                     "source_time_s": p["source_total_time_s"], "comparable": comparable, "comparability_reason": why,
                     "source_batching": src_batching, "target_batching": batching,
                     "measured_ci95_lo_s": number(m.get("total_time_ci95_lo_s")),
                     "measured_ci95_hi_s": number(m.get("total_time_ci95_hi_s")),
                     "measured_repeats": m.get("repeats", ""), "target_record": rec_path,
                     "source_hardware": p["source_hardware"], "hardware": p["hardware"], "method": p["method"]})
    if not rows:
        return pd.DataFrame(columns=VALIDATION_BATCH_COLUMNS)
    frame = _errors(pd.DataFrame(rows)).assign(kind=VALIDATION)
    return frame.reindex(columns=VALIDATION_BATCH_COLUMNS)


# Bins of the source's achieved fraction of the roofline for the error summary: an op far below its
# roofline spends its time on something the ceilings do not scale (launch latency, framework overhead).
FRACTION_BINS = [0.0, 0.1, 0.3, 0.6, np.inf]
FRACTION_LABELS = ["fraction <0.1", "fraction 0.1-0.3", "fraction 0.3-0.6", "fraction >=0.6"]
MAPE_COLUMNS = ["kind", "method", "source_hardware", "hardware", "scope", "library", "stage", "op", "n", "mape",
                "median_ape", "max_ape", "mean_error", "mape_unchanged", "points"]


def _summary(group: pd.DataFrame, **names) -> dict:
    return {**names, "n": len(group), "mape": float(group["ape"].mean()), "median_ape": float(group["ape"].median()),
            "max_ape": float(group["ape"].max()), "mean_error": float(group["error"].mean()),
            "mape_unchanged": float(group["unchanged_ape"].mean())}


def mape_table(modules: pd.DataFrame, batch: pd.DataFrame) -> pd.DataFrame:
    """Mean absolute percentage error (as a fraction) per op, per stage total, over all ops of a library,
    over a library's ops by regime and by the source's achieved fraction of the roofline, and per library
    on the batch rows that are comparable; ``mape_unchanged`` is the error of predicting
    the source's time unchanged, ``mean_error`` the signed bias (positive: predicted too slow)."""
    rows = []
    if not modules.empty:
        first = modules.iloc[0]
        meta = {"method": first["method"], "source_hardware": first["source_hardware"], "hardware": first["hardware"]}
        ops = modules[modules["level"] == OP_LEVEL]
        for (lib, stage, op), g in ops.groupby(["library", "stage", "op"], sort=False):
            rows.append(_summary(g, **meta, scope="op", library=lib, stage=stage, op=op,
                                 points=" ".join(f"b{b}s{s}" for b, s in zip(g["b"], g["s"]))))
        for (lib, stage), g in modules[modules["level"] == STAGE_LEVEL].groupby(["library", "stage"], sort=False):
            rows.append(_summary(g, **meta, scope="stage", library=lib, stage=stage, op=STAGE_OP,
                                 points=" ".join(f"b{b}s{s}" for b, s in zip(g["b"], g["s"]))))
        for (lib, stage), g in ops.groupby(["library", "stage"], sort=False):
            rows.append(_summary(g, **meta, scope="all_ops", library=lib, stage=stage, op="all", points=f"{len(g)} op rows"))
        # Where the method errs: by the ops' regime, and by how close to its roofline an op ran on the source
        for (lib, reg), g in ops.groupby(["library", "regime"], sort=False):
            rows.append(_summary(g, **meta, scope="regime", library=lib, stage="", op=reg, points=f"{len(g)} op rows"))
        buckets = pd.cut(ops["source_fraction"], FRACTION_BINS, right=False, labels=FRACTION_LABELS)
        for (lib, label), g in ops.groupby([ops["library"], buckets], sort=True, observed=True):
            rows.append(_summary(g, **meta, scope="source_fraction", library=lib, stage="", op=str(label),
                                 points=f"{len(g)} op rows"))
    if not batch.empty:
        comparable = batch[batch["comparable"].astype(bool)]
        first = batch.iloc[0]
        meta = {"method": first["method"], "source_hardware": first["source_hardware"], "hardware": first["hardware"]}
        for lib, g in comparable.groupby("library", sort=False):
            rows.append(_summary(g, **meta, scope="batch", library=lib, stage="", op="",
                                 points=" ".join(g["dataset"])))
    frame = pd.DataFrame(rows).assign(kind=VALIDATION) if rows else pd.DataFrame()
    return frame.reindex(columns=MAPE_COLUMNS)


def validation_figure(modules: pd.DataFrame, batch: pd.DataFrame, source: str, target: str):
    """Predicted against measured: ops, stage totals, batch rows (log axes; the diagonal is exact)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [("per op (all decoder layers)", modules[modules["level"] == OP_LEVEL] if not modules.empty else modules),
              ("per stage (sum of the ten ops)", modules[modules["level"] == STAGE_LEVEL] if not modules.empty else modules),
              ("batch: dataset time per library", batch)]
    markers = {"prefill": "o", "decode": "s"}
    for ax, (title, data) in zip(axes, panels):
        scored = data[data["comparable"].astype(bool)] if "comparable" in data and not data.empty else data
        ax.set_title(title + (f": MAPE {100 * scored['ape'].mean():.1f} % over {len(scored)}" if len(scored) else ""),
                     fontsize=10)
        if data.empty:
            ax.text(0.5, 0.5, f"nothing measured on {target}\nto compare with", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if "dataset" in data:
            for comparable, g in data.groupby(data["comparable"].astype(bool)):
                for lib, gl in g.groupby("library"):
                    label = f"{lib}" + ("" if comparable else " (batching differs: not scored)")
                    ax.scatter(gl["measured_time_s"], gl["predicted_time_s"], label=label, s=50,
                               marker="o" if comparable else "x")
                    for _, r in gl.iterrows():
                        ax.annotate(r["dataset"], (r["measured_time_s"], r["predicted_time_s"]), fontsize=7,
                                    xytext=(3, 3), textcoords="offset points")
        elif title.startswith("per op"):
            for (stage, op), g in data.groupby(["stage", "op"], sort=False):
                ax.scatter(g["measured_time_s"], g["predicted_time_s"], marker=markers.get(stage, "o"), s=22,
                           label=op if stage == "prefill" else None,
                           c=[plt.cm.tab10(list(OPS).index(op) % 10)], alpha=0.8)
        else:
            for (lib, stage), g in data.groupby(["library", "stage"], sort=False):
                ax.scatter(g["measured_time_s"], g["predicted_time_s"], marker=markers.get(stage, "o"), s=40,
                           label=f"{lib} {stage}")
        lo = float(np.nanmin([data["measured_time_s"].min(), data["predicted_time_s"].min()])) / 1.5
        hi = float(np.nanmax([data["measured_time_s"].max(), data["predicted_time_s"].max()])) * 1.5
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"measured on {target} (s)")
        ax.set_ylabel(f"predicted from {source} (s)")
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(f"{target} predicted from {source}'s measurements and both rooflines "
                 "(ops: squares decode, circles prefill)", fontsize=10)
    fig.tight_layout()
    return fig
