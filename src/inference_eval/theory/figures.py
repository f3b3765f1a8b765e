"""The roofline figure: each op (prefill and decode) at its intensity, under the hardware's roof."""

from __future__ import annotations

import numpy as np
import pandas as pd

from inference_eval.opnames import OPS, STAGES

STAGE_MARKERS = {"prefill": "o", "decode": "^"}


def roofline_figure(table: pd.DataFrame, title: str | None = None):
    """A log-log roofline from an ``op_table`` frame (one model, one hardware).

    Filled markers: the fused byte model; hollow: the unfused one, drawn only where it differs.
    Ops with no FLOPs (the KV cache update) have intensity 0 and cannot sit on a log axis; the
    caption lists them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    missing = {"op", "stage", "level", "intensity_fused", "intensity_unfused", "peak_tflops", "bandwidth_gbs"} - set(table)
    if missing:
        raise ValueError(f"roofline table lacks columns {sorted(missing)}")
    # compute ops only: the all_reduce row (tensor parallel) moves bytes over the interconnect, not HBM
    ops = table[((table["level"] == "op") & table["op"].isin(OPS)) | (table["op"] == "lm_head")]
    peak = float(table["peak_tflops"].iloc[0]) * 1e12
    bandwidth = float(table["bandwidth_gbs"].iloc[0]) * 1e9
    ridge = peak / bandwidth

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(9, 6))
    positive = ops[ops["flops"] > 0]
    lo = min(0.1, float(positive[["intensity_fused", "intensity_unfused"]].min().min()) / 2)
    hi = max(ridge * 10, float(positive[["intensity_fused", "intensity_unfused"]].max().max()) * 2)
    x = np.logspace(np.log10(lo), np.log10(hi), 400)
    ax.plot(x, np.minimum(peak, x * bandwidth), color="black", linewidth=2, label="roof")
    ax.axvline(ridge, color="grey", linestyle="--", linewidth=1)
    ax.annotate(f"ridge {ridge:.0f} FLOP/B, peak {peak / 1e12:.0f} TFLOP/s", (ridge, peak), textcoords="offset points",
                xytext=(-5, -15), fontsize=8, ha="right")

    names = [op for op in list(OPS) + ["lm_head"] if op in set(positive["op"])]
    palette = dict(zip(names, sns.color_palette("tab10", len(names))))
    for _, row in positive.iterrows():
        color = palette[row["op"]]
        marker = STAGE_MARKERS.get(row["stage"], "s")
        y = min(peak, row["intensity_fused"] * bandwidth)
        ax.scatter(row["intensity_fused"], y, color=color, marker=marker, s=60, zorder=3, alpha=0.85)
        if not np.isclose(row["intensity_unfused"], row["intensity_fused"]):
            yu = min(peak, row["intensity_unfused"] * bandwidth)
            ax.scatter(row["intensity_unfused"], yu, facecolors="none", edgecolors=[color], marker=marker, s=60,
                       zorder=3)
    for name in names:
        ax.scatter([], [], color=palette[name], marker="s", label=name)
    for stage in STAGES:
        ax.scatter([], [], color="grey", marker=STAGE_MARKERS[stage], label=stage)
    ax.scatter([], [], facecolors="none", edgecolors="grey", label="unfused (score matrix / KV concat)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attainable FLOP/s")
    zero = sorted(set(ops.loc[ops["flops"] <= 0, "op"]))
    source = str(table["ceilings_source"].iloc[0]) if "ceilings_source" in table else ""
    caption = f"ceilings: {source}" + (f"; not shown (0 FLOPs): {', '.join(zero)}" if zero else "")
    ax.set_title(title or "roofline", fontsize=11)
    fig.text(0.01, -0.02, caption, fontsize=7, ha="left", va="top")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig
