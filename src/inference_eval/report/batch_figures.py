"""The batch throughput figure (``results/<hw>/figures/throughput.png``) over the dataset tables.

One panel per model (the tables hold one group of rows per model, ``inference_eval.report.tables``):
in each, the datasets that model ran on the x axis and one bar per library, coloured the same in every
panel, with the 95 % interval over repeats as error bars. Failed runs are marked with their status;
rows the fairness gate found not comparable within their model's group are hatched and named in a note
under the plot. The panels share the y axis, so bars of different models are read on one scale.
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd

# Above this ratio between the fastest and the slowest ok row the y axis is logarithmic: libraries
# differ by orders of magnitude on small models.
LOG_SCALE_RATIO = 50
NOTE_ROWS = 12
REASON_CHARS = 110


def throughput_data(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The tables' rows in one frame with the columns the figure draws: ``dataset`` (the key, with
    ' (synthetic)' for synthetic data), ``tok_s`` (ok rows only) and the library's label."""
    frames = []
    for name, t in tables.items():
        t = t.copy()
        synthetic = "synthetic" in t and t["synthetic"].astype(str).str.lower().eq("true").any()
        t["dataset"] = f"{name} (synthetic)" if synthetic else name
        frames.append(t)
    if not frames:
        raise ValueError("throughput figure: no dataset tables given")
    data = pd.concat(frames, ignore_index=True)
    for col in ("token_throughput_ci95_lo_tok_s", "token_throughput_ci95_hi_tok_s", "comparable",
                "comparability_reason", "library_label", "library", "model"):
        if col not in data:
            data[col] = None  # tables made before intervals and the gate existed
    data["library_label"] = data["library_label"].where(data["library_label"].notna(), data["library"])
    data["model"] = data["model"].fillna("unknown model").astype(str)
    data["tok_s"] = pd.to_numeric(data["token_throughput_tok_s"], errors="coerce").where(data["status"] == "ok")
    return data


def throughput_figure(tables: Mapping[str, pd.DataFrame], title: str):
    """Token throughput per model (one panel each), dataset and library; ``tables`` maps dataset -> its
    ``<dataset>_table.csv`` frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = throughput_data(tables)
    models = sorted(dict.fromkeys(data["model"]))
    datasets = list(dict.fromkeys(data["dataset"]))
    labels = list(dict.fromkeys(data["library_label"].astype(str)))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {label: colours[i % len(colours)] for i, label in enumerate(labels)}
    per_model = {m: data[data["model"] == m] for m in models}
    widths = [max(1, len(set(per_model[m]["dataset"]))) for m in models]
    width_in = min(16, max(6, sum(0.45 * w * max(1, len(labels)) for w in widths) + 1))
    fig, axes = plt.subplots(1, len(models), figsize=(width_in, 4.5), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    axes = list(axes[0])
    positive = data["tok_s"].dropna()
    positive = positive[positive > 0]
    log = bool(len(positive) and positive.max() / positive.min() > LOG_SCALE_RATIO)
    # one bar width in every panel: that of the panel with the most libraries
    width = 0.8 / max(1, max(len(set(per_model[m]["library_label"].astype(str))) for m in models))
    not_comparable, drawn, failed = [], set(), []  # failed: (panel, x, status) of rows with no result
    for ax, model in zip(axes, models):
        sub_model = per_model[model]
        order = [d for d in datasets if d in set(sub_model["dataset"])]
        runs = [label for label in labels if label in set(sub_model["library_label"].astype(str))]

        def x_of(dataset: str, run: str) -> float:
            """A bar's centre: the panel's libraries side by side around their dataset's tick."""
            return order.index(dataset) + width * (runs.index(run) - (len(runs) - 1) / 2)

        for run in runs:
            sub = sub_model[sub_model["library_label"].astype(str) == run]
            xs = [x_of(d, run) for d in sub["dataset"]]
            ys = sub["tok_s"].to_numpy(dtype=float)
            lo = pd.to_numeric(sub["token_throughput_ci95_lo_tok_s"], errors="coerce").to_numpy(dtype=float)
            hi = pd.to_numeric(sub["token_throughput_ci95_hi_tok_s"], errors="coerce").to_numpy(dtype=float)
            err = np.vstack([np.where(np.isnan(lo), 0, ys - lo), np.where(np.isnan(hi), 0, hi - ys)])
            err = np.nan_to_num(np.clip(err, 0, None))
            flagged = sub["comparable"].astype(str).str.lower().eq("false").to_numpy()
            for x, y, e0, e1, bad in zip(xs, ys, err[0], err[1], flagged):
                if np.isnan(y):
                    continue
                ax.bar(x, y, width=width, color=colour[run], alpha=0.45 if bad else 1.0,
                       hatch="//" if bad else None, edgecolor="dimgray" if bad else colour[run])
                drawn.add(run)
                if e0 or e1:
                    ax.errorbar(x, y, yerr=[[e0], [e1]], color="black", capsize=3, linewidth=1)
            for (_, r), bad in zip(sub.iterrows(), flagged):
                if bad:
                    not_comparable.append(f"{r['dataset']} {model} {run}: "
                                          f"{str(r['comparability_reason'])[:REASON_CHARS]}")
        ax.set_xticks(range(len(order)), order)
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_xlabel("dataset")
        ax.set_title(model, fontsize=10)
        if log:
            ax.set_yscale("log")
        failed += [(ax, x_of(r["dataset"], str(r["library_label"])), str(r["status"]))
                   for _, r in sub_model[sub_model["status"] != "ok"].iterrows()]
    axes[0].set_ylabel("output tokens / s (batch)")
    for ax, x, status in failed:  # after every panel is drawn: the shared y axis has its final limits
        ax.text(x, ax.get_ylim()[0], status, rotation=90, ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.suptitle(title)
    # one legend for the figure: each library that has a bar, in its colour, then the hatch's meaning
    from matplotlib.patches import Patch

    handles = [Patch(color=colour[label], label=label) for label in labels if label in drawn]
    if not_comparable:
        handles.append(Patch(facecolor="white", edgecolor="dimgray", hatch="//", label="not comparable"))
    if handles:
        fig.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    notes = ["error bars: 95 % Student-t interval over repeats (none where a row ran once)"]
    if not_comparable:
        notes.append("hatched: NOT comparable with the other rows of its dataset and model (fairness gate):")
        notes += [f"  {n}" for n in not_comparable[:NOTE_ROWS]]
        if len(not_comparable) > NOTE_ROWS:
            notes.append(f"  ... and {len(not_comparable) - NOTE_ROWS} more (comparability_reason in the tables)")
    fig.tight_layout()
    fig.text(0.01, 0.0, "\n".join(notes), fontsize=7, va="top", ha="left")
    return fig
