"""Predict per-op, per-stage and batch times on hardware that was not measured (docs/theory.md,
"Predicting hardware you do not have").

Inputs: one hardware's measurements (the source) and both hardwares' roofline ceilings (peak FLOP/s P
and memory bandwidth W from ``conf/hardware/<hw>.yaml``, measured values where the profile has
``measured:``, else the datasheet; ``theory.hardware.ceilings``).

Per op (``predict_modules``): an op keeps the fraction of its roofline time that it reached on the
source. With F its FLOPs and B its bytes (the theory's byte model of the library, as the module table
gives them), its roofline time on hardware x is R_x = max(F / P_x, B / W_x), and

    t_target = t_source * R_target / R_source.

- Intensity F/B above both ridge points (P/W): compute-bound on both, t scales by P_source / P_target.
- Below both: memory-bound on both, t scales by W_source / W_target.
- Between the two ridges the op crosses: compute-bound on the hardware with the lower ridge,
  memory-bound on the other. It keeps its fraction of the roof, whose binding ceiling changes, so the
  ratio is the target's binding time over the source's; it always lies between the two pure ratios
  above (the row gives both as ``compute_scaled_time_s`` and ``memory_scaled_time_s``, which bracket
  the prediction, and ``regime`` says ``compute->memory`` or ``memory->compute``).

``other`` (kernels outside every op range) has no FLOP or byte model and is not predicted; a stage's
prediction is the sum of its ten decoder-layer ops (the time model's target, ``layers_time``).

Batch (``predict_batch``): a library's measured dataset time on the source keeps its fraction of the
dataset's roofline bound (``<dataset>_bound.csv``, theory/bound.py): t_target = t_source * bound_target
/ bound_source, for the same rows (request count, prompt and output tokens must agree).

Every output row says it is a prediction (``kind = prediction``), with its ``method`` and
``source_hardware``. ``validate_*`` compares predictions with what the target measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inference_eval.opnames import OPS, OTHER
from inference_eval.theory.hardware import Ceilings
from inference_eval.theory.roofline import COMPUTE, MEMORY

PREDICTION = "prediction"
VALIDATION = "validation"
OP_METHOD = "roofline_fraction"     # each op keeps its measured fraction of its roofline time
BATCH_METHOD = "bound_fraction"     # each library keeps its measured fraction of the dataset bound
STAGE_OP = "decoder_layers"         # the op name of a stage row: the sum of the ten layer ops
OK, NOT_PREDICTED, ROWS_DIFFER = "ok", "not_predicted", "rows_differ"
OP_LEVEL, STAGE_LEVEL = "op", "stage"
COMPUTE_TO_MEMORY, MEMORY_TO_COMPUTE = f"{COMPUTE}->{MEMORY}", f"{MEMORY}->{COMPUTE}"
# The measured time an op prediction starts from: the median over repeats, as the time model uses.
TIME_COLUMN = "time_median_s"
MODULE_COLUMNS = ("library", "model", "hardware", "b", "s", "stage", "op", TIME_COLUMN, "theory_flops",
                  "theory_bytes", "layers")
SHAPE_KEYS = ["library", "model", "stage", "b", "s"]

MODULE_OUTPUT = ["kind", "method", "source_hardware", "hardware", "library", "model", "stage", "sweep", "b", "s",
                 "level", "op", "status", "reason", "predicted_time_s", "predicted_time_per_layer_s", "source_time_s",
                 "scale", "source_fraction", "regime", "crosses_ridge", "crossing_ops", "intensity", "source_ridge",
                 "target_ridge", "compute_scaled_time_s", "memory_scaled_time_s", "source_roofline_time_s",
                 "target_roofline_time_s", "theory_flops", "theory_bytes", "byte_model", "layers",
                 "source_ceilings", "target_ceilings"]
BATCH_OUTPUT = ["kind", "method", "source_hardware", "hardware", "dataset", "library", "library_label", "model",
                "status", "reason", "predicted_total_time_s", "predicted_ci95_lo_s", "predicted_ci95_hi_s",
                "predicted_token_throughput_tok_s", "source_total_time_s", "source_efficiency", "source_bound_s",
                "target_bound_s", "bound_ratio", "source_prefill_bound_s", "source_decode_bound_s",
                "target_prefill_bound_s", "target_decode_bound_s", "source_bound_batch_size",
                "target_bound_batch_size", "n_requests", "input_tokens", "output_tokens", "source_batching",
                "source_settings_from", "source_comparable", "source_repeats", "source_record", "note",
                "source_ceilings", "target_ceilings"]


class PredictionError(ValueError):
    """Bad input to a prediction; the message names the table, column or hardware."""


# -- per op --------------------------------------------------------------------------------------
def regime(intensity, source: Ceilings, target: Ceilings) -> np.ndarray:
    """``compute``, ``memory``, ``compute->memory`` or ``memory->compute`` per op (source -> target).

    An op is compute-bound on a hardware when its intensity exceeds that hardware's ridge point (as
    ``theory.roofline.bound``)."""
    intensity = np.asarray(intensity, dtype=float)
    on_source = np.where(intensity > source.ridge_point, COMPUTE, MEMORY)
    on_target = np.where(intensity > target.ridge_point, COMPUTE, MEMORY)
    crossed = np.char.add(np.char.add(on_source.astype(str), "->"), on_target.astype(str))
    return np.where(on_source == on_target, on_source, crossed)


def op_scale(flops, nbytes, source: Ceilings, target: Ceilings) -> dict[str, np.ndarray]:
    """Roofline times on both hardwares and their ratio (the factor a measured time is scaled by)."""
    flops = np.asarray(flops, dtype=float)
    nbytes = np.asarray(nbytes, dtype=float)
    if np.any(~np.isfinite(nbytes)) or np.any(nbytes <= 0) or np.any(~np.isfinite(flops)) or np.any(flops < 0):
        raise PredictionError("every op needs finite FLOPs >= 0 and bytes > 0 to be scaled")
    src = np.maximum(flops / source.peak_flops, nbytes / source.bandwidth)
    tgt = np.maximum(flops / target.peak_flops, nbytes / target.bandwidth)
    return {"source_roofline_time_s": src, "target_roofline_time_s": tgt, "scale": tgt / src,
            "intensity": flops / nbytes, "regime": regime(flops / nbytes, source, target)}


def _check_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PredictionError(f"{what} lacks column(s) {', '.join(missing)}")


def _label(frame: pd.DataFrame, method: str, source: str, target: str) -> pd.DataFrame:
    frame = frame.copy()
    frame["kind"] = PREDICTION
    frame["method"] = method
    frame["source_hardware"] = source
    frame["hardware"] = target
    return frame


def predict_modules(modules: pd.DataFrame, source: Ceilings, target: Ceilings) -> pd.DataFrame:
    """Per-op and per-stage predictions on ``target`` from the module tables measured on ``source``.

    ``modules``: rows of ``results/<source>/modules/<library>_<stage>_<sweep>.csv`` (one or several
    libraries). A library whose tables are a failure record (status other than ok, no op times) gets one
    row with that status and reason. Op rows: every measured op row; ``other`` is ``not_predicted``.
    Stage rows (``level = stage``, ``op = decoder_layers``): the sum of the ten ops of one shape.
    """
    failed = pd.DataFrame()
    if "status" in modules:
        bad = modules[modules["status"] != OK]
        modules = modules[modules["status"] == OK]
        if not bad.empty:
            keep = [c for c in ("library", "model", "stage", "sweep", "status", "reason") if c in bad]
            failed = bad[keep].drop_duplicates(subset=[c for c in ("library", "stage", "sweep") if c in keep])
            failed = failed.assign(level=STAGE_LEVEL, op=STAGE_OP)
    if modules.empty:
        out = _label(failed, OP_METHOD, source.hardware, target.hardware)
        return out.reindex(columns=MODULE_OUTPUT)
    _check_columns(modules, MODULE_COLUMNS, "module table")
    hardwares = sorted(set(modules["hardware"].astype(str)))
    if hardwares != [source.hardware]:
        raise PredictionError(f"module tables measured on {', '.join(hardwares)} given as source '{source.hardware}'")
    unknown = sorted(set(modules["op"]) - set(OPS) - {OTHER})
    if unknown:
        raise PredictionError(f"module table has op(s) {', '.join(unknown)}; known: {', '.join((*OPS, OTHER))}")
    frame = modules.copy()
    if "sweep" not in frame:
        frame["sweep"] = ""
    if "byte_model" not in frame:
        frame["byte_model"] = ""
    if "achieved_fraction" not in frame:
        frame["achieved_fraction"] = np.nan
    ops = frame[frame["op"] != OTHER].copy()
    no_theory = ops["theory_flops"].isna() | ops["theory_bytes"].isna() | ~(ops["theory_bytes"] > 0)
    if no_theory.any():
        first = ops[no_theory].iloc[0]
        raise PredictionError(f"module table row {first['library']} {first['stage']} b={first['b']} s={first['s']} "
                              f"op {first['op']} has no theory FLOPs/bytes")
    scaled = op_scale(ops["theory_flops"], ops["theory_bytes"], source, target)
    t = ops[TIME_COLUMN].astype(float).to_numpy()
    ops = ops.assign(
        level=OP_LEVEL, status=OK, reason="", source_time_s=t, predicted_time_s=t * scaled["scale"],
        scale=scaled["scale"], regime=scaled["regime"], intensity=scaled["intensity"],
        crosses_ridge=np.char.find(scaled["regime"].astype(str), "->") >= 0,
        source_roofline_time_s=scaled["source_roofline_time_s"],
        target_roofline_time_s=scaled["target_roofline_time_s"],
        compute_scaled_time_s=t * source.peak_flops / target.peak_flops,
        memory_scaled_time_s=t * source.bandwidth / target.bandwidth,
        source_fraction=scaled["source_roofline_time_s"] / (t / ops["layers"].astype(float)),
        crossing_ops="")
    ops["crossing_ops"] = np.where(ops["crosses_ridge"], ops["op"], "")
    ops["predicted_time_per_layer_s"] = ops["predicted_time_s"] / ops["layers"].astype(float)
    other = frame[frame["op"] == OTHER].assign(
        level=OP_LEVEL, status=NOT_PREDICTED, source_time_s=lambda d: d[TIME_COLUMN],
        reason="kernels outside every op range (embedding, final norm, masks) have no FLOP/byte model")
    stage_keys = [*SHAPE_KEYS, "sweep"]
    stages = ops.groupby(stage_keys, sort=False).agg(
        predicted_time_s=("predicted_time_s", "sum"), source_time_s=("source_time_s", "sum"),
        compute_scaled_time_s=("compute_scaled_time_s", "sum"), memory_scaled_time_s=("memory_scaled_time_s", "sum"),
        source_roofline_time_s=("source_roofline_time_s", "sum"),
        target_roofline_time_s=("target_roofline_time_s", "sum"), theory_flops=("theory_flops", "sum"),
        theory_bytes=("theory_bytes", "sum"), layers=("layers", "first"), n_ops=("op", "nunique"),
        crosses_ridge=("crosses_ridge", "any"),
        crossing_ops=("crossing_ops", lambda v: ",".join(x for x in v if x))).reset_index()
    incomplete = stages["n_ops"] != len(OPS)
    stages = stages.assign(
        level=STAGE_LEVEL, op=STAGE_OP, status=np.where(incomplete, NOT_PREDICTED, OK),
        reason=np.where(incomplete, "not every decoder-layer op was measured at this shape", ""),
        scale=stages["predicted_time_s"] / stages["source_time_s"],
        predicted_time_per_layer_s=stages["predicted_time_s"] / stages["layers"].astype(float),
        regime=np.where(stages["crosses_ridge"], "mixed (see crossing_ops)", "no op crosses"),
        source_fraction=stages["source_roofline_time_s"] / (stages["source_time_s"] / stages["layers"].astype(float)))
    stages.loc[incomplete, "predicted_time_s"] = np.nan
    out = pd.concat([ops, other, stages.drop(columns="n_ops"), failed], ignore_index=True)
    out = _label(out, OP_METHOD, source.hardware, target.hardware)
    out["source_ridge"] = source.ridge_point
    out["target_ridge"] = target.ridge_point
    out["source_ceilings"] = source.source
    out["target_ceilings"] = target.source
    order = {op: i for i, op in enumerate((*OPS, OTHER, STAGE_OP))}
    out = out.assign(_o=out["op"].map(order)).sort_values(["library", "stage", "sweep", "b", "s", "_o"], kind="stable")
    return out.drop(columns="_o").reindex(columns=MODULE_OUTPUT).reset_index(drop=True)


# -- batch ---------------------------------------------------------------------------------------
def record_batching(record: Mapping[str, Any] | None) -> tuple[str, str]:
    """(batching, where it came from) of a batch record: its fairness manifest's effective setting, or
    for a record made before manifests existed the setting its recorded config implies; ("", why) when
    neither is there."""
    if not record:
        return "", "no record"
    settings = (record.get("fairness") or {}).get("settings") or {}
    if settings.get("batching"):
        return str(settings["batching"]), "fairness manifest"
    cfg = (record.get("provenance") or {}).get("config")
    if cfg:
        from inference_eval.fairness import requested_settings

        return str(requested_settings(cfg, "batch").get("batching", "")), "recorded config (no fairness manifest)"
    return "", "record has neither a fairness manifest nor its config"


def _same_rows(a: Mapping[str, Any], b: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    diffs = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if va is None or vb is None or (isinstance(va, float) and np.isnan(va)) or int(va) != int(vb):
            diffs.append(f"{k} {va} vs {vb}")
    return diffs


def _by_model(bounds: pd.DataFrame, what: str) -> dict[str, dict]:
    _check_columns(bounds, ("model", "status", "bound_s", "n_requests", "input_tokens", "output_tokens"), what)
    return {str(r["model"]): r for r in bounds.to_dict("records")}


def _notes(sb: Mapping[str, Any], tb: Mapping[str, Any], source: str, target: str, batching: str) -> str:
    """What the prediction of one row assumes beyond the method, where the rows make it doubtful: a target
    whose memory holds fewer sequences than the source's (the bounds' batch sizes), and a library that runs
    one request at a time (its decode reads the weights once per request, so its time follows the
    bandwidth ratio, not the batched bound's mix of compute and memory)."""
    notes = []
    bs, bt = int(sb.get("batch_size") or 0), int(tb.get("batch_size") or 0)
    if bt < bs:
        notes.append(f"{target}'s memory holds {bt} sequences at the longest context ({source}: {bs}): the "
                     f"prediction assumes the library keeps its fraction of the bound with the smaller batches, "
                     f"and a library that sized its batch to {source}'s memory batches differently here")
    if batching.startswith("one request at a time"):
        notes.append("runs one request at a time: its time follows a batch-1 decode (bandwidth), not the "
                     "batched bound; read the prediction as rough")
    return "; ".join(notes)


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def predict_batch(tables: Mapping[str, pd.DataFrame], source_bounds: Mapping[str, pd.DataFrame],
                  target_bounds: Mapping[str, pd.DataFrame], source: str, target: str,
                  records: Callable[[str], Mapping[str, Any] | None] = lambda path: None) -> pd.DataFrame:
    """Per dataset and library row of the source's ``<dataset>_table.csv``: its time on ``target``.

    ``tables``, ``source_bounds``, ``target_bounds`` map dataset -> frame. ``records(path)`` returns
    the batch record a table row names (for its batching setting), or None. A row that has no measured
    time, whose bound is missing or does not fit, or whose rows differ between the bounds, is written
    with that status and reason and no prediction.
    """
    out = []
    for dataset, table in tables.items():
        _check_columns(table, ("library", "model", "status", "total_time_s", "n_requests"), f"{dataset} table")
        if dataset not in source_bounds or dataset not in target_bounds:
            raise PredictionError(f"dataset {dataset}: both hardwares' bound tables are needed")
        src_b = _by_model(source_bounds[dataset], f"{source} {dataset} bound")
        tgt_b = _by_model(target_bounds[dataset], f"{target} {dataset} bound")
        for row in table.to_dict("records"):
            model = str(row["model"])
            rec_path = str(row.get("record") or "")
            batching, settings_from = record_batching(records(rec_path) if rec_path else None)
            base = {"dataset": dataset, "library": row["library"], "library_label": row.get("library_label", ""),
                    "model": model, "source_total_time_s": _number(row.get("total_time_s")),
                    "n_requests": row.get("n_requests"), "input_tokens": row.get("input_tokens"),
                    "output_tokens": row.get("requested_output_tokens", row.get("output_tokens")),
                    "source_batching": batching, "source_settings_from": settings_from,
                    "source_comparable": row.get("comparable", ""), "source_repeats": row.get("repeats", ""),
                    "source_record": rec_path}
            sb, tb = src_b.get(model), tgt_b.get(model)
            for prefix, bound in (("source", sb), ("target", tb)):
                if bound is not None:
                    base.update({f"{prefix}_bound_s": _number(bound["bound_s"]),
                                 f"{prefix}_prefill_bound_s": _number(bound.get("prefill_s")),
                                 f"{prefix}_decode_bound_s": _number(bound.get("decode_s")),
                                 f"{prefix}_bound_batch_size": bound.get("batch_size"),
                                 f"{prefix}_ceilings": bound.get("ceilings_source", "")})
            status, reason = OK, ""
            t = base["source_total_time_s"]
            if str(row["status"]) != OK or not np.isfinite(t) or t <= 0:
                status, reason = str(row["status"]), f"no measured time on {source} ({row['status']}: {row.get('reason', '')})"
            elif sb is None or tb is None:
                status = NOT_PREDICTED
                reason = f"no {source if sb is None else target} bound row for model {model}"
            elif str(tb["status"]) != OK:
                status, reason = str(tb["status"]), f"{target} bound: {tb.get('reason', '')}"
            elif str(sb["status"]) != OK:
                status, reason = str(sb["status"]), f"{source} bound: {sb.get('reason', '')}"
            else:
                diffs = _same_rows(sb, tb, ("n_requests", "input_tokens", "output_tokens"))
                diffs += [f"table {d}" for d in _same_rows(row, sb, ("n_requests", "input_tokens"))]
                if diffs:
                    status, reason = ROWS_DIFFER, "the bounds are not over the measured rows: " + "; ".join(diffs)
            if status == OK:
                base["note"] = _notes(sb, tb, source, target, batching)
                ratio = base["target_bound_s"] / base["source_bound_s"]
                base.update(bound_ratio=ratio, predicted_total_time_s=t * ratio,
                            source_efficiency=base["source_bound_s"] / t,
                            predicted_ci95_lo_s=_number(row.get("total_time_ci95_lo_s")) * ratio,
                            predicted_ci95_hi_s=_number(row.get("total_time_ci95_hi_s")) * ratio,
                            predicted_token_throughput_tok_s=_number(row.get("output_tokens")) / (t * ratio))
            out.append({**base, "status": status, "reason": reason})
    frame = _label(pd.DataFrame(out), BATCH_METHOD, source, target)
    return frame.reindex(columns=BATCH_OUTPUT)


# -- validation ----------------------------------------------------------------------------------
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
                     "predicted_time_s": p["predicted_total_time_s"], "measured_time_s": _number(m.get("total_time_s")),
                     "source_time_s": p["source_total_time_s"], "comparable": comparable, "comparability_reason": why,
                     "source_batching": src_batching, "target_batching": batching,
                     "measured_ci95_lo_s": _number(m.get("total_time_ci95_lo_s")),
                     "measured_ci95_hi_s": _number(m.get("total_time_ci95_hi_s")),
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


# -- files ---------------------------------------------------------------------------------------
def _provenance(frame: pd.DataFrame, cfg: Mapping[str, Any] | None) -> pd.DataFrame:
    if cfg is None:
        return frame
    from inference_eval.report.provenance import provenance

    prov = provenance(dict(cfg))
    return frame.assign(git_commit=prov["git"].get("commit"), inference_eval_version=prov["versions"].get("inference-eval"),
                        created=prov["finished"])


def _read(path: str | Path) -> pd.DataFrame:
    from inference_eval.slurm_failures import read_table

    return read_table(path)


def _record_loader(root: str | Path | None = None) -> Callable[[str], Mapping[str, Any] | None]:
    """Reads a batch record named by a table's ``record`` column (relative to ``root``, default the
    working directory); None when the file is not there."""
    def load(path: str) -> Mapping[str, Any] | None:
        p = Path(path)
        if root is not None and not p.is_absolute():
            p = Path(root) / p
        return json.loads(p.read_text()) if p.is_file() else None

    return load


def write_module_predictions(module_csvs: Sequence[str], source: Ceilings, target: Ceilings, out_csv: str,
                             cfg: Mapping[str, Any] | None = None) -> pd.DataFrame:
    from inference_eval.io import write_csv

    if not module_csvs:
        raise PredictionError(f"no module tables of {source.hardware} to predict {target.hardware} from")
    modules = pd.concat([_read(p) for p in module_csvs], ignore_index=True)
    frame = _provenance(predict_modules(modules, source, target), cfg)
    write_csv(out_csv, frame)
    return frame


def _dataset_of(path: str, suffix: str) -> str:
    name = Path(path).name
    if not name.endswith(suffix):
        raise PredictionError(f"{path}: expected a file named <dataset>{suffix}")
    return name[: -len(suffix)]


def write_batch_predictions(tables: Sequence[str], source_bounds: Sequence[str], target_bounds: Sequence[str],
                            source: str, target: str, out_csv: str, cfg: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """``tables``: the source's ``<dataset>_table.csv``; the bounds: ``<dataset>_bound.csv`` of each hardware."""
    from inference_eval.io import write_csv

    frames = {_dataset_of(p, "_table.csv"): pd.read_csv(p) for p in tables}
    sb = {_dataset_of(p, "_bound.csv"): pd.read_csv(p) for p in source_bounds}
    tb = {_dataset_of(p, "_bound.csv"): pd.read_csv(p) for p in target_bounds}
    frame = _provenance(predict_batch(frames, sb, tb, source, target, _record_loader()), cfg)
    write_csv(out_csv, frame)
    return frame


def write_validation(module_prediction_csv: str | None, target_module_csvs: Sequence[str],
                     batch_prediction_csv: str | None, target_tables: Sequence[str], out_modules: str,
                     out_batch: str, out_mape: str, out_figure: str) -> pd.DataFrame:
    """The validation tables and figure of one (source, target) pair; returns the MAPE table."""
    import matplotlib.pyplot as plt

    from inference_eval.io import write_csv, write_figure

    modules = pd.DataFrame(columns=VALIDATION_MODULE_COLUMNS)
    source = target = ""
    if module_prediction_csv:
        predicted = pd.read_csv(module_prediction_csv)
        source, target = str(predicted["source_hardware"].iloc[0]), str(predicted["hardware"].iloc[0])
        measured = [_read(p) for p in target_module_csvs]
        if measured:
            modules = validate_modules(predicted, pd.concat(measured, ignore_index=True))
    batch = pd.DataFrame(columns=VALIDATION_BATCH_COLUMNS)
    if batch_prediction_csv:
        predicted_batch = pd.read_csv(batch_prediction_csv)
        source = source or str(predicted_batch["source_hardware"].iloc[0])
        target = target or str(predicted_batch["hardware"].iloc[0])
        tables = {_dataset_of(p, "_table.csv"): pd.read_csv(p) for p in target_tables}
        batch = validate_batch(predicted_batch, tables, _record_loader())
    mape = mape_table(modules, batch)
    write_csv(out_modules, modules)
    write_csv(out_batch, batch)
    write_csv(out_mape, mape)
    fig = validation_figure(modules, batch, source, target)
    try:
        write_figure(out_figure, fig)
    finally:
        plt.close(fig)
    return mape
