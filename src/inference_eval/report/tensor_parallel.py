"""How well each library scales over GPUs: the tensor-parallel table and figure (docs/tensor-parallel.md).

One row per library x model x degree t for one dataset (``results/<hw>/tensor_parallel/<dataset>_scaling.csv``):

- ``speedup`` = T(t0) / T(t), where t0 is the row's ``baseline_degree``: the smallest degree of the same
  library and model that ran (status ok) on the same requests; 1 unless the model does not fit one GPU
  (Llama-2-70B: t0 = 2). ``scaling_efficiency`` = speedup / (t / t0): 1 is perfect scaling.
- ``efficiency`` = bound_s(t) / T(t), against the t-GPU roofline bound of ``<dataset>_bound_tp<t>.csv``
  (``theory.bound``, all-reduces included); ``bound_speedup`` = bound_s(t0) / bound_s(t) is the speed-up
  the bound itself allows, less than t / t0 by its communication term.
- A degree the model does not fit (the plan's memory check, ``theory.parallel.memory_check_for_config``)
  is a row with status ``does_not_fit`` and the check's sentence as its reason; a run that failed is a row
  with its status and reason, never a gap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["library", "library_label", "model", "dataset", "hardware", "tensor_parallel", "status", "reason",
           "total_time_s", "token_throughput_tok_s", "output_tokens", "baseline_degree", "speedup",
           "scaling_efficiency", "bound_s", "bound_communication_s", "bound_speedup", "efficiency", "note", "record"]
LABELS = {"transformers": "TRF", "vllm": "vLLM", "mii": "MII", "trtllm": "TRT", "llamacpp": "L.CPP"}
DOES_NOT_FIT = "does_not_fit"


def _record_degree(rec: Mapping[str, Any]) -> int:
    """The degree a record ran at, from its resolved config (records from before the key: 1)."""
    lib = (((rec.get("provenance") or {}).get("config") or {}).get("library") or {})
    return int(lib.get("tensor_parallel") or 1)


def _requests_id(rec: Mapping[str, Any]) -> Any:
    return (rec.get("fairness") or {}).get("requests_sha256")


def _run_row(entry: Mapping[str, Any]) -> dict:
    """A planned run as a row: the record's numbers, or the plan's reason when it was not run."""
    row = {"library": entry["library"], "model": entry["model"], "dataset": entry.get("dataset"),
           "hardware": entry.get("hardware"), "tensor_parallel": int(entry["tensor_parallel"]),
           "record": entry.get("record"), "note": "", "_requests": None}
    if not entry.get("record"):
        row.update(status=entry.get("status") or DOES_NOT_FIT, reason=entry.get("reason") or "")
        return row
    path = Path(entry["record"])
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        row.update(status="failed", reason=f"unreadable record {path}: {exc}")
        return row
    row.update(status=rec.get("status"), reason=rec.get("reason") or "", total_time_s=rec.get("total_time_s"),
               token_throughput_tok_s=rec.get("token_throughput_tok_s"), output_tokens=rec.get("output_tokens"),
               _requests=_requests_id(rec))
    ran = _record_degree(rec)
    if ran != row["tensor_parallel"]:
        row.update(status="invalid", reason=f"record {path} ran at tensor_parallel = {ran}, planned "
                                            f"{row['tensor_parallel']}")
    return row


def _bounds(bounds: Mapping[int, str | Path]) -> dict[tuple[int, str], tuple[float, float]]:
    """(degree, model) -> (bound_s, communication_s) from the bound CSVs, one per degree."""
    out = {}
    for degree, path in bounds.items():
        if path is None or not Path(path).exists():
            continue
        frame = pd.read_csv(path)
        for _, b in frame.iterrows():
            comm = b.get("communication_s", 0.0)  # a bound CSV made before the tensor-parallel columns: t = 1, 0
            out[(int(degree), str(b["model"]))] = (float(b["bound_s"]), 0.0 if pd.isna(comm) else float(comm))
    return out


def _ok_time(row: Mapping[str, Any]) -> float | None:
    value = row.get("total_time_s")
    if row.get("status") != "ok" or value is None or not math.isfinite(float(value)) or float(value) <= 0:
        return None
    return float(value)


def scaling_table(planned: Iterable[Mapping[str, Any]], bounds: Mapping[int, str | Path] | None = None) -> pd.DataFrame:
    """The scaling table from the planned runs of one dataset (each: library, model, tensor_parallel,
    record path or None with status and reason) and the bound CSV of each degree."""
    rows = [_run_row(e) for e in planned]
    bound = _bounds(bounds or {})
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["library"], row["model"]), []).append(row)
        b = bound.get((row["tensor_parallel"], str(row["model"])))
        row["bound_s"], row["bound_communication_s"] = b if b else (None, None)
    for group in groups.values():
        ran = sorted((r for r in group if _ok_time(r) is not None), key=lambda r: r["tensor_parallel"])
        if not ran:
            continue
        base = ran[0]
        for row in group:
            row["baseline_degree"] = base["tensor_parallel"]
            if _ok_time(row) is None:
                continue
            if row["_requests"] != base["_requests"]:
                row["note"] = (f"requests differ from the t = {base['tensor_parallel']} run's (requests_sha256); "
                               f"no speed-up")
                continue
            row["speedup"] = _ok_time(base) / _ok_time(row)
            row["scaling_efficiency"] = row["speedup"] / (row["tensor_parallel"] / base["tensor_parallel"])
            if base.get("bound_s") and row.get("bound_s"):
                row["bound_speedup"] = base["bound_s"] / row["bound_s"]
    for row in rows:
        if _ok_time(row) is not None and row.get("bound_s"):
            row["efficiency"] = row["bound_s"] / _ok_time(row)
        row["library_label"] = LABELS.get(row["library"], row["library"])
        row.pop("_requests", None)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return table.sort_values(["model", "library", "tensor_parallel"], kind="stable").reset_index(drop=True)


def scaling_figure(tables: Mapping[str, pd.DataFrame], title: str = ""):
    """Per dataset: scaling efficiency (speed-up / (t / t0), top) and efficiency against the t-GPU bound
    (bottom) over the degree t, one line per library x model; rows that did not run are named below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(tables)
    fig, axes = plt.subplots(2, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 6.5), squeeze=False,
                             sharey="row")
    missing = []
    for col, name in enumerate(names):
        data = tables[name]
        for (lib, model), sub in data.groupby(["library_label", "model"], sort=True):
            sub = sub.sort_values("tensor_parallel")
            label = f"{lib} / {model}"
            for ax, key in ((axes[0][col], "scaling_efficiency"), (axes[1][col], "efficiency")):
                values = pd.to_numeric(sub[key], errors="coerce")
                keep = values.notna()
                if keep.any():
                    ax.plot(sub["tensor_parallel"][keep], values[keep], marker="o", label=label)
            for _, r in sub[sub["status"] != "ok"].iterrows():
                missing.append(f"{name} {label} t={r['tensor_parallel']}: {r['status']}")
        for row, ylabel in ((0, "scaling efficiency\nspeed-up / (t / t0)"), (1, "efficiency\nt-GPU bound / time")):
            ax = axes[row][col]
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel("tensor-parallel degree t")
            degrees = sorted({int(t) for t in data["tensor_parallel"]})
            ax.set_xticks(degrees)
            ax.set_ylim(bottom=0)
            if col == 0:
                ax.set_ylabel(ylabel)
        axes[0][col].set_title(name)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    if missing:
        fig.text(0.01, -0.01, "not run or failed: " + "; ".join(missing), fontsize=7, ha="left", va="top", wrap=True)
    fig.tight_layout()
    return fig


def write_scaling_table(path: str | Path, planned: Iterable[Mapping[str, Any]],
                        bounds: Mapping[int, str | Path]) -> pd.DataFrame:
    from inference_eval.io import write_csv

    table = scaling_table(planned, bounds)
    write_csv(path, table)
    return table


def write_scaling_figure(path: str | Path, tables: Mapping[str, str | Path], title: str = "") -> None:
    import matplotlib.pyplot as plt

    from inference_eval.io import write_figure

    fig = scaling_figure({name: pd.read_csv(p) for name, p in tables.items()}, title)
    try:
        write_figure(path, fig)
    finally:
        plt.close(fig)
