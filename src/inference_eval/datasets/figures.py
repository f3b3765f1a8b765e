"""The paper's Figure 3: input and output length distributions per dataset, plus a summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from inference_eval.requests import DatasetError, load_requests

STAT_KEYS = ("min", "median", "mean", "max", "sum")


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read dataset manifest: {exc}") from exc


def lengths_frame(rows_paths: Sequence[str | Path], manifests: Sequence[dict]) -> pd.DataFrame:
    """Long form: one line per row and kind (input/output) with its length in tokens."""
    frames = []
    for rows_path, manifest in zip(rows_paths, manifests):
        requests = load_requests(rows_path)
        label = manifest["member"]
        frames.append(pd.DataFrame({"dataset": label, "kind": "input", "tokens": [r.prompt_len for r in requests]}))
        frames.append(pd.DataFrame({"dataset": label, "kind": "output", "tokens": [r.max_tokens for r in requests]}))
    return pd.concat(frames, ignore_index=True)


def summary_table(manifests: Sequence[dict]) -> pd.DataFrame:
    records = []
    for m in manifests:
        rec = {"dataset": m["name"], "member": m["member"], "synthetic": m["synthetic"], "source": m["source"],
               "rows": m["rows"], "rows_before_limit": m.get("rows_before_limit"), "seed": m["seed"],
               "max_tokens_cap": m.get("max_tokens_cap"), "tokenizer": m.get("tokenizer"),
               "source_sha256": m.get("source_sha256")}
        for kind in ("input_tokens", "output_tokens"):
            for key in STAT_KEYS:
                rec[f"{kind}_{key}"] = m[kind].get(key)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def lengths_figure(frame: pd.DataFrame, variant: str):
    """A grid: one column per dataset, input lengths on top, output lengths below (seaborn histograms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    datasets = list(dict.fromkeys(frame["dataset"]))
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(2, len(datasets), figsize=(3.2 * len(datasets), 5.2), squeeze=False)
    for col, name in enumerate(datasets):
        for row, kind in enumerate(("input", "output")):
            ax = axes[row][col]
            part = frame[(frame["dataset"] == name) & (frame["kind"] == kind)]
            color = "tab:blue" if kind == "input" else "tab:orange"
            if part["tokens"].nunique() == 1:  # e.g. s16k: every output is 16,000; one visible bar
                value = int(part["tokens"].iloc[0])
                pad = max(1, value // 20)
                ax.bar([value], [len(part)], width=pad / 2, color=color, alpha=0.75)
                ax.set_xlim(value - pad, value + pad)
                ax.set_ylabel("Count")
            else:
                sns.histplot(part, x="tokens", ax=ax, bins=min(30, max(5, part["tokens"].nunique())), color=color)
            ax.set_title(f"{name}: {kind} ({len(part)} rows)")
            ax.ticklabel_format(axis="x", useOffset=False, style="plain")
            ax.set_xlabel(f"{kind} length (Llama-2 tokens)" if variant != "synthetic" else f"{kind} length (tokens)")
    label = "SYNTHETIC datasets (random token ids)" if variant == "synthetic" else "datasets built from their sources"
    fig.suptitle(f"Input and output length distributions: {label}")
    fig.tight_layout()
    return fig


def write_figures(rows_paths: Sequence[str | Path], manifest_paths: Sequence[str | Path], variant: str,
                  figure_path: str | Path, summary_path: str | Path) -> pd.DataFrame:
    """Figure 3 and the summary table for one variant (synthetic | real); both written atomically."""
    from inference_eval.io import write_csv, write_figure

    manifests = [read_manifest(p) for p in manifest_paths]
    expected_synthetic = variant == "synthetic"
    for path, m in zip(manifest_paths, manifests):
        if bool(m.get("synthetic")) != expected_synthetic:
            raise DatasetError(f"{path}: synthetic={m.get('synthetic')} does not belong to variant {variant!r}")
    summary = summary_table(manifests)
    fig = lengths_figure(lengths_frame(rows_paths, manifests), variant)
    try:
        write_figure(figure_path, fig)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
    write_csv(summary_path, summary)
    return summary
