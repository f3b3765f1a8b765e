"""Serving curves (the paper's Figures 1, 4, 5): throughput and latency against the request rate, one
line per library (and model), for one dataset. Rows that did not run are named under the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from inference_eval.io import write_figure

PANELS = (
    ("token_throughput_tok_s", "token throughput (tok/s)"),
    ("sequence_throughput_req_s", "sequence throughput (req/s)"),
    ("mean_latency_per_output_token_s", "mean latency per output token (s)"),
    ("ttft_s_p50", "TTFT p50 (s)"),
    ("tpot_s_mean", "TPOT mean (s)"),
    ("e2e_s_p99", "end-to-end latency p99 (s)"),
)


def load_sweeps(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Sweep CSVs; a SLURM failure record in place of one becomes its row (status, reason)."""
    from inference_eval.slurm_failures import read_table

    frames = [read_table(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def serving_figure(frame: pd.DataFrame, out_path: str | Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    plotted = frame[frame["rate"].notna() & frame["status"].isin(["ok", "invalid"])].copy()
    plotted["series"] = plotted["library"].astype(str) + " / " + plotted["model"].astype(str)
    plotted.loc[plotted["status"] == "invalid", "series"] += " (invalid)"
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    for ax, (col, label) in zip(axes.flat, PANELS):
        if plotted.empty or col not in plotted or plotted[col].isna().all():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            sns.lineplot(data=plotted, x="rate", y=col, hue="series", marker="o", ax=ax, legend=ax is axes.flat[0])
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(label)
    missing = frame[~frame["status"].isin(["ok", "invalid"])]
    notes = sorted({f"{r.library}/{r.model}: {r.status}" + (f" ({str(r.reason)[:80]})" if isinstance(r.reason, str) else "")
                    for r in missing.itertuples()})
    if notes:
        fig.text(0.01, -0.02 - 0.02 * len(notes), "not plotted:\n" + "\n".join(notes), fontsize=8, va="bottom")
    title = title or "serving: throughput and latency vs request rate"
    if "dataset_source" in frame and (frame["dataset_source"].astype(str) == "synthetic").any():
        title += " (SYNTHETIC dataset: random token ids)"
    fig.suptitle(title)
    fig.tight_layout()
    write_figure(out_path, fig)
    plt.close(fig)
