"""What the profiling rules do: measure one library's sweeps and write its module tables; fit; plot.

A library that cannot be profiled here still writes its files, each a row with status and reason.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from inference_eval.io import write_csv, write_figure, write_json
from inference_eval.opnames import STAGES
from inference_eval.profiling import sweep as sw
from inference_eval.profiling.runners import ProfilingUnavailable, variant_spec
from inference_eval.records import ModuleRow, checked_table
from inference_eval.records.modules import rows_frame as module_rows_frame
from inference_eval.slurm_failures import read_table

# What the time model is fitted to: the stage's decoder-layer time (all l layers summed; per-op
# medians over repeats), see sweep.points_table.
FIT_TARGET = "layers_time_median_s"


def module_paths(results: str, hardware: str, variant: str) -> dict[str, str]:
    base = f"{results}/{hardware}/modules/{variant}"
    out = {f"{stage}_{sweep}": f"{base}_{stage}_{sweep}.csv" for stage in STAGES for sweep in sw.SWEEPS}
    out["points"] = f"{base}_points.csv"
    out["record"] = f"{base}.json"
    return out


def _write_hf_config(cfg: Mapping[str, Any], folder: Path) -> str:
    from inference_eval.profiling.runners import llama_config
    llama_config(cfg["model"]).save_pretrained(folder)
    return str(folder)


def profile_library(cfg: dict, variant: str, outputs: Mapping[str, str], hf_dir: str | None = None,
                    progress: bool = True) -> dict:
    """Measure ``variant`` on every sweep point and write its module tables, points and record."""
    from inference_eval.report.provenance import provenance, utc_now

    spec = variant_spec(variant, cfg)  # an unknown variant stops here, with the valid ones listed
    started = utc_now()
    st = sw.settings(cfg)
    points = sw.sweep_points(st)
    shapes = sw.unique_shapes(points)
    device = cfg["hardware"].get("kind") == "gpu"
    record: dict[str, Any] = {"kind": "modules", "library": variant, "model": cfg["model"]["name"],
                              "hardware": cfg["hardware"]["name"], "settings": st, "points": points,
                              "status": "ok", "reason": "", "ncu": {"status": "off", "reason": ""}}
    summary = None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"ie-prof-{variant}-") as tmp:
        if spec.runner == "vllm" and not (hf_dir and Path(hf_dir, "config.json").exists()):
            hf_dir = _write_hf_config(cfg, Path(tmp) / "hf")
        max_tokens = max(b * s for b, s in shapes)
        max_seqs = max(b for b, _ in shapes)
        dram = _ncu(cfg, variant, st, shapes, hf_dir, max_tokens, max_seqs, Path(tmp), record)
        try:
            if st.get("cpu_threads"):
                import torch
                torch.set_num_threads(int(st["cpu_threads"]))
            from inference_eval.profiling.attribution import RangeMarker
            from inference_eval.profiling.runners import make_runner
            runner = make_runner(variant, cfg, RangeMarker(), hf_dir=hf_dir, max_tokens_per_step=max_tokens,
                                 max_seqs=max_seqs, seed=int(cfg.get("seed", 0)))
            try:
                long = sw.measure(runner, shapes, int(st["warmup"]), int(st["repeats"]), device, progress)
            finally:
                runner.close()
            summary = sw.summarize(long, cfg, variant, points, dram)
        except ProfilingUnavailable as exc:
            record.update(status="unsupported", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - the record carries the failure, the job still fails below
            record.update(status=_status_of(exc), reason=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=8))
    record["measure_s"] = time.perf_counter() - t0
    if summary is not None:
        for stage in STAGES:
            for sweep in sw.SWEEPS:
                table = sw.sweep_table(summary, stage, sweep)
                table["status"], table["reason"] = "ok", ""
                _write_module_table(outputs[f"{stage}_{sweep}"], table)
        write_csv(outputs["points"], sw.points_table(summary, cfg).assign(status="ok", reason=""))
    else:
        failed = sw.failed_tables(variant, cfg, record["status"], record["reason"])
        for stage in STAGES:
            for sweep in sw.SWEEPS:
                _write_module_table(outputs[f"{stage}_{sweep}"], failed.assign(stage=stage, sweep=sweep))
        write_csv(outputs["points"], failed)
    record["provenance"] = provenance(cfg, started=started)
    write_json(outputs["record"], record)
    if record["status"] not in ("ok", "unsupported"):
        raise RuntimeError(f"profiling {variant} failed ({record['status']}): {record['reason']} "
                           f"(record: {outputs['record']})")
    return record


def _write_module_table(path: str, table: pd.DataFrame) -> None:
    """A module table as ``records.ModuleRow`` rows (with their schema version)."""
    rows = [ModuleRow.from_dict(r, source=f"{path} row {i + 1}") for i, r in enumerate(table.to_dict("records"))]
    write_csv(path, module_rows_frame(rows))


def _status_of(exc: Exception) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    return "oom" if "out of memory" in text or "outofmemory" in text else "failed"


def _ncu(cfg, variant, st, shapes, hf_dir, max_tokens, max_seqs, tmp: Path, record: dict) -> pd.DataFrame | None:
    """Nsight Compute DRAM bytes for one layer, when the hardware profile is a GPU and ncu is on PATH."""
    from inference_eval.profiling import ncu

    opts = st.get("ncu") or {}
    if cfg["hardware"].get("kind") != "gpu" or not opts.get("enabled", True):
        record["ncu"] = {"status": "off", "reason": "not a GPU hardware profile" if cfg["hardware"].get("kind") != "gpu"
                         else "profiling.ncu.enabled is false"}
        return None
    if not ncu.available():
        record["ncu"] = {"status": "not_installed", "reason": "ncu is not on PATH"}
        return None
    layer = int(opts.get("layer", 1)) % int(cfg["model"]["num_layers"])
    spec = {"cfg": cfg, "variant": variant, "hf_dir": hf_dir, "layer": layer, "shapes": shapes,
            "max_tokens_per_step": max_tokens, "max_seqs": max_seqs}
    t0 = time.perf_counter()
    try:
        dram = ncu.profile(spec, tmp / "ncu", float(opts.get("timeout_s", 1800)))
    except ncu.NcuError as exc:
        record["ncu"] = {"status": "failed", "reason": str(exc)[-2000:]}
        return None
    record["ncu"] = {"status": "ok", "reason": "", "layer": layer, "kernels": int(dram["ncu_kernels"].sum()),
                     "seconds": time.perf_counter() - t0, "command": " ".join(ncu.command(["<program>"], "<csv>"))}
    return dram


def fit_coefficients(points_paths: list[str], out_csv: str, fit_points_csv: str | None = None,
                     module_csvs: list[str] | None = None) -> pd.DataFrame:
    """Fit every library's time models; libraries without points get a row with their status.

    Rows ``fit = total``: one fit of the stage total (``regression``). With ``module_csvs`` (the module
    tables), also rows ``fit = per_term``: each term against its ops' measured time, and their sum
    (``term_fit``). ``fit_points_csv`` gets the total fit's predictions per point.
    """
    from inference_eval.profiling import regression, term_fit

    frames, rows = [], []
    for p in points_paths:
        frame = read_table(p)  # a SLURM failure record in place of a points table: that library's reason
        if "status" in frame and (frame["status"] != "ok").all():
            for stage in STAGES:
                rows.append({"library": frame["library"].iloc[0], "stage": stage, "status": frame["status"].iloc[0],
                             "reason": frame["reason"].iloc[0]})
            continue
        frames.append(frame)
    table = pd.DataFrame()
    if frames:
        points = pd.concat(frames, ignore_index=True)
        table = regression.coefficients_table(points, FIT_TARGET)
        modules = _ok_modules(module_csvs or [])
        if not modules.empty:
            per_term = term_fit.per_term_table(points, modules, FIT_TARGET)
            table = pd.concat([table, per_term], ignore_index=True)
            order = table["fit"].map({"total": 0, "per_term": 1})
            table = table.iloc[np.lexsort((order, table["stage"], table["library"]))].reset_index(drop=True)
        table = table.assign(status="ok", reason="")
        if fit_points_csv:
            write_csv(fit_points_csv, regression.predictions(points, table, FIT_TARGET))
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    write_csv(out_csv, table)
    return table


def _ok_modules(module_csvs: list[str]) -> pd.DataFrame:
    """The measured rows of the module tables (failure records, which carry no op times, left out)."""
    frames = [checked_table(p) for p in module_csvs]
    frames = [f[f["status"] == "ok"] if "status" in f else f for f in frames]
    frames = [f for f in frames if not f.empty and "op" in f]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_figures(module_csvs: list[str], coefficients_csv: str, points_paths: list[str], shares_png: str,
                  fit_png: str) -> None:
    from inference_eval.profiling import figures, regression

    modules = pd.concat([checked_table(p) for p in module_csvs], ignore_index=True)
    write_figure(shares_png, figures.shares_figure(modules))
    coef = pd.read_csv(coefficients_csv)
    frames = [read_table(p) for p in points_paths]
    frames = [f for f in frames if "status" not in f or (f["status"] == "ok").any()]
    points = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    ok = coef[coef.get("status", "ok") == "ok"] if "status" in coef else coef
    preds = regression.predictions(points, ok, FIT_TARGET) if not points.empty and not ok.empty else pd.DataFrame()
    write_figure(fit_png, figures.fit_figure(preds))


def load_record(path: str) -> dict:
    return json.loads(Path(path).read_text())
