"""Figures: stacked share of time per op across the s and b sweeps (the paper's Figure 2), and the
fitted time model's predictions against the measured times."""

from __future__ import annotations

import pandas as pd

from inference_eval.opnames import OPS, OTHER, STAGES

SWEEP_AXES = {"seq": ("s", "sequence length s"), "batch": ("b", "batch size b")}


def shares_figure(modules: pd.DataFrame):
    """Rows = library, columns = (stage, sweep); each panel a stacked bar of op shares per point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    ok = modules[modules.get("status", "ok") == "ok"] if "status" in modules else modules
    libraries = sorted(modules["library"].unique())
    panels = [(stage, sweep) for stage in STAGES for sweep in SWEEP_AXES]
    fig, axes = plt.subplots(len(libraries), len(panels), figsize=(4.2 * len(panels), 3.0 * len(libraries)),
                             squeeze=False)
    order = [*OPS, OTHER]
    colors = dict(zip(order, sns.color_palette("tab20", len(order))))
    for i, lib in enumerate(libraries):
        for j, (stage, sweep) in enumerate(panels):
            ax = axes[i][j]
            data = ok[(ok["library"] == lib) & (ok.get("stage") == stage) & (ok.get("sweep") == sweep)]
            axis, label = SWEEP_AXES[sweep]
            if data.empty:
                reason = modules[modules["library"] == lib].get("reason")
                text = str(reason.iloc[0])[:80] if reason is not None and len(reason) else "no data"
                ax.text(0.5, 0.5, f"not measured:\n{text}", ha="center", va="center", fontsize=7, wrap=True)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                pivot = data.pivot_table(index=axis, columns="op", values="share", aggfunc="sum").reindex(
                    columns=order).fillna(0.0).sort_index()
                bottom = None
                x = [str(v) for v in pivot.index]
                for op in order:
                    ax.bar(x, pivot[op], bottom=bottom, color=colors[op], label=op, width=0.8)
                    bottom = pivot[op] if bottom is None else bottom + pivot[op]
                ax.set_ylim(0, 1)
                ax.set_xlabel(label)
            if j == 0:
                ax.set_ylabel(f"{lib}\nshare of time")
            if i == 0:
                ax.set_title(f"{stage}, {sweep} sweep")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[op]) for op in order]
    fig.legend(handles, order, loc="upper center", ncol=len(order), fontsize=8, bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def fit_figure(predictions: pd.DataFrame):
    """Measured vs predicted time per library and stage, held-out points marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    if predictions.empty:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no library could be profiled: no fit", ha="center", va="center")
        ax.axis("off")
        return fig
    fig, axes = plt.subplots(1, len(STAGES), figsize=(5.5 * len(STAGES), 4.5), squeeze=False)
    data = predictions.assign(set=lambda d: d["heldout"].map({True: "held out", False: "fit"}))
    for ax, stage in zip(axes[0], STAGES):
        part = data[data["stage"] == stage]
        if part.empty:
            ax.axis("off")
            continue
        sns.scatterplot(data=part, x="measured_s", y="predicted_s", hue="library", style="set", ax=ax, s=50)
        lo = float(min(part["measured_s"].min(), part["predicted_s"].min()))
        hi = float(max(part["measured_s"].max(), part["predicted_s"].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured time, all decoder layers (s)")
        ax.set_ylabel("predicted time (s)")
        ax.set_title(f"{stage}: fitted time model")
    fig.tight_layout()
    return fig
