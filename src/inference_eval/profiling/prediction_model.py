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
``source_hardware``. ``profiling.prediction_validation`` compares predictions with what the target measured;
``profiling.prediction`` writes the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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


def number(v) -> float:
    """A table cell as a float: NaN where it is empty or not a number."""
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
                    "model": model, "source_total_time_s": number(row.get("total_time_s")),
                    "n_requests": row.get("n_requests"), "input_tokens": row.get("input_tokens"),
                    "output_tokens": row.get("requested_output_tokens", row.get("output_tokens")),
                    "source_batching": batching, "source_settings_from": settings_from,
                    "source_comparable": row.get("comparable", ""), "source_repeats": row.get("repeats", ""),
                    "source_record": rec_path}
            sb, tb = src_b.get(model), tgt_b.get(model)
            for prefix, bound in (("source", sb), ("target", tb)):
                if bound is not None:
                    base.update({f"{prefix}_bound_s": number(bound["bound_s"]),
                                 f"{prefix}_prefill_bound_s": number(bound.get("prefill_s")),
                                 f"{prefix}_decode_bound_s": number(bound.get("decode_s")),
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
                            predicted_ci95_lo_s=number(row.get("total_time_ci95_lo_s")) * ratio,
                            predicted_ci95_hi_s=number(row.get("total_time_ci95_hi_s")) * ratio,
                            predicted_token_throughput_tok_s=number(row.get("output_tokens")) / (t * ratio))
            out.append({**base, "status": status, "reason": reason})
    frame = _label(pd.DataFrame(out), BATCH_METHOD, source, target)
    return frame.reindex(columns=BATCH_OUTPUT)
