"""Predictions for hardware that was not measured, as the rules of ``rules/prediction.smk`` write them:
``write_module_predictions``, ``write_batch_predictions`` and ``write_validation`` read the result tables,
predict (``profiling.prediction_model``, the method) or compare (``profiling.prediction_validation``) and
write the CSVs and the figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from inference_eval.profiling.prediction_model import PredictionError, op_scale, predict_batch, predict_modules
from inference_eval.profiling.prediction_validation import (
    VALIDATION_BATCH_COLUMNS,
    VALIDATION_MODULE_COLUMNS,
    mape_table,
    validate_batch,
    validate_modules,
    validation_figure,
)
from inference_eval.theory.hardware import Ceilings

# The names the callers of the predictions use, importable from here (each module has the rest).
__all__ = ["VALIDATION_BATCH_COLUMNS", "VALIDATION_MODULE_COLUMNS", "PredictionError", "mape_table", "op_scale",
           "predict_batch", "predict_modules", "validate_batch", "validate_modules", "validation_figure",
           "write_batch_predictions", "write_module_predictions", "write_validation"]


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
