"""The dataset tables (the paper's Tables 2 and 3 in one): one row per library x model.

Every planned run gives a row: a library that failed or is missing shows its status and reason
(the paper's '-' cells), never a silent gap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

TABLE_COLUMNS = [
    "library", "library_label", "model", "dataset", "dataset_source", "synthetic", "hardware",
    "n_requests", "dataset_rows", "input_tokens", "requested_output_tokens", "output_tokens", "n_exact",
    "total_time_s", "token_throughput_tok_s", "requests_per_s", "load_time_s", "peak_memory_gb",
    "bound_s", "efficiency", "status", "reason", "config_hash", "record",
]
LABELS = {"transformers": "TRF", "vllm": "vLLM", "mii": "MII", "trtllm": "TRT", "llamacpp": "L.CPP"}


def record_row(path: str | Path) -> dict:
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {"status": "failed", "reason": f"unreadable record {path}: {exc}", "record": str(path)}
    row = {k: rec.get(k) for k in TABLE_COLUMNS if k in rec}
    row["library_label"] = LABELS.get(rec.get("library", ""), rec.get("library"))
    row["config_hash"] = (rec.get("provenance") or {}).get("config_hash")
    row["record"] = str(path)
    return row


def dataset_table(records: Iterable[str | Path], bounds: str | Path | None = None) -> pd.DataFrame:
    rows = [record_row(p) for p in records]
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
    """Token throughput per library and dataset; failed runs are marked with their status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    frames = []
    for name, t in tables.items():
        t = t.copy()
        synthetic = "synthetic" in t and t["synthetic"].astype(str).str.lower().eq("true").any()
        t["dataset"] = f"{name} (synthetic)" if synthetic else name
        frames.append(t)
    data = pd.concat(frames, ignore_index=True)
    data["tok_s"] = pd.to_numeric(data["token_throughput_tok_s"], errors="coerce").where(data["status"] == "ok")
    data["run"] = data["library_label"].astype(str) + " / " + data["model"].astype(str)
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.5 * len(tables) * data["run"].nunique())), 4))
    sns.barplot(data=data, x="dataset", y="tok_s", hue="run", ax=ax)
    ax.set_ylabel("output tokens / s (batch)")
    positive = data["tok_s"].dropna()
    positive = positive[positive > 0]
    if len(positive) and positive.max() / positive.min() > 50:
        ax.set_yscale("log")  # libraries differ by orders of magnitude on small models
    ax.set_title(title)
    order = list(dict.fromkeys(data["dataset"]))
    runs = list(dict.fromkeys(data["run"]))
    width = 0.8 / max(1, len(runs))
    for _, r in data[data["status"] != "ok"].iterrows():
        x = order.index(r["dataset"]) - 0.4 + width * (runs.index(r["run"]) + 0.5)
        ax.text(x, ax.get_ylim()[0], str(r["status"]), rotation=90, ha="center", va="bottom", fontsize=7, color="dimgray")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig
