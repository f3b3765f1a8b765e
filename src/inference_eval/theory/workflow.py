"""What the theory rules write (called by workflow_scripts/theory_tables.py and dataset_bound.py).

Each CSV row carries its provenance in columns (config hash, git commit, package version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from inference_eval.io import write_csv, write_figure


def _provenance_columns(frame: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    from inference_eval.report.provenance import provenance

    prov = provenance(cfg)
    frame = frame.copy()
    if "config_hash" not in frame or frame["config_hash"].isna().all():
        frame["config_hash"] = prov["config_hash"]
    frame["git_commit"] = prov["git"].get("commit")
    frame["inference_eval_version"] = prov["versions"].get("inference-eval")
    frame["created"] = prov["finished"]
    return frame


def write_op_table(path: str | Path, cfg: Mapping[str, Any], batch: int, seq: int, causal: bool = False,
                   tensor_parallel: int = 1) -> pd.DataFrame:
    from inference_eval.theory.roofline import op_table_for_config

    frame = _provenance_columns(op_table_for_config(dict(cfg), batch, seq, causal=causal,
                                                    tensor_parallel=tensor_parallel), cfg)
    write_csv(path, frame)
    return frame


def write_roofline(table_path: str | Path, figure_path: str | Path, cfg: Mapping[str, Any]) -> None:
    import matplotlib.pyplot as plt

    from inference_eval.theory.figures import roofline_figure

    table = pd.read_csv(table_path)
    batch, seq = int(table["batch"].iloc[0]), int(table["seq"].iloc[0])
    title = (f"{cfg['model']['name']} on {cfg['hardware']['name']}: roofline per op, b={batch}, s={seq} "
             f"({cfg['model'].get('dtype', 'bfloat16')})")
    fig = roofline_figure(table, title=title)
    try:
        write_figure(figure_path, fig)
    finally:
        plt.close(fig)


def write_bound_table(path: str | Path, rows_path: str | Path, cfgs: Mapping[str, Mapping[str, Any]],
                      dataset: str, degree: int = 1) -> pd.DataFrame:
    from inference_eval.theory.bound import bound_table

    frame = bound_table(rows_path, cfgs, dataset, degree)
    first = next(iter(cfgs.values()))
    frame = _provenance_columns(frame, first)
    write_csv(path, frame)
    return frame
