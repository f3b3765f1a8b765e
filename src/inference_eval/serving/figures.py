"""Serving curves (the paper's Figures 1, 4, 5): throughput and latency against the request rate, one
line per library, for one dataset, in one block of panels per model (a library keeps its colour in every
block). Rows that did not run are named under the plot.

Where the sweep carries them (``serving.metrics.CI_COLUMNS``), each panel with ``<col>_ci_lo`` /
``<col>_ci_hi`` columns gets a shaded band: the 95 % bootstrap interval over that rate's requests (it
does not include run-to-run variation of the server). In the p99 panels a hollow marker is a rate with
``p99_reliable`` False (fewer than 100 measured requests). A series with a row whose ``comparable`` is
False (its fairness settings differ from the rest, e.g. prefix caching on) is dashed and faded, marked
"(not comparable)", and its ``comparability_reason`` is listed under the plot, wrapped, not cut. Old CSVs
without these columns plot as before. A searched sweep spans rates from a few to thousands per second, so
the rate axis is logarithmic when the finite rates span ``LOG_RATE_SPAN`` or more (linear otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from inference_eval.io import write_figure

PANELS = (
    ("token_throughput_tok_s", "token throughput (tok/s)"),
    ("sequence_throughput_req_s", "sequence throughput (req/s)"),
    ("mean_latency_per_output_token_s", "mean latency per output token (s)"),
    ("ttft_s_p50", "TTFT p50 (s)"),
    ("ttft_s_p99", "TTFT p99 (s)"),
    ("tpot_s_mean", "TPOT mean (s)"),
    ("tpot_s_p50", "TPOT p50 (s)"),
    ("e2e_s_p99", "end-to-end latency p99 (s)"),
)
HOLLOW_NOTE = "hollow: fewer than 100 measured requests"


# The ratio of the highest to the lowest finite rate from which the rate axis is logarithmic: a searched
# sweep doubling from 2 to 4,096 req/s would otherwise crowd its fixed rates into the first tick.
LOG_RATE_SPAN = 20.0
REASON_WIDTH = 150  # characters per footer line of a not-comparable series' reasons


def rate_axis_scale(rates) -> str:
    """``"log"`` when the finite, positive rates span LOG_RATE_SPAN or more, else ``"linear"``."""
    r = np.asarray([float(x) for x in rates], dtype=float)
    r = r[np.isfinite(r) & (r > 0)]
    return "log" if len(r) and r.max() / r.min() >= LOG_RATE_SPAN else "linear"


def reason_lines(series: str, reasons) -> list[str]:
    """The footer lines naming why ``series`` is not comparable: each distinct reason once, wrapped at
    REASON_WIDTH characters (a reason names every key that differs, so it must not be cut)."""
    import textwrap

    why = sorted({str(r).strip() for r in reasons if isinstance(r, str) and r.strip()})
    text = f"{series}: " + ("; ".join(why) if why else "no reason given")
    return textwrap.wrap(text, REASON_WIDTH, subsequent_indent="    ") or [text]


# scenario.goodput_share's default: the star's share for sweep CSVs without a within_goodput_share column.
GOODPUT_SHARE = 0.99


def load_sweeps(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Sweep CSVs (rows of ``records.ServingRow``, each row's schema version checked); a SLURM failure
    record in place of one becomes its row (status, reason)."""
    from inference_eval.records import checked_table

    frames = [checked_table(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _as_bool(column: pd.Series, default: bool) -> pd.Series:
    """A boolean column as read back from CSV (bools, "True"/"False", 0/1); missing values -> ``default``."""
    def one(v) -> bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return default
        if isinstance(v, str):
            s = v.strip().lower()
            if s in ("true", "1", "yes"):
                return True
            if s in ("false", "0", "no"):
                return False
            return default
        return bool(v)
    return column.map(one).astype(bool)


def _series_colours(names: Sequence[str]) -> dict:
    import seaborn as sns
    palette = sns.color_palette("tab10" if len(names) <= 10 else "husl", n_colors=max(len(names), 1))
    return dict(zip(names, palette))


def _per_rate(rows: pd.DataFrame) -> pd.DataFrame:
    """One point per rate (the mean of duplicate rows, as seaborn's lineplot drew them); finite rates only."""
    rows = rows[np.isfinite(rows["rate"].to_numpy(float))]
    numeric = rows.drop(columns=["p99_reliable"], errors="ignore").select_dtypes("number").columns
    agg = rows.groupby("rate", sort=True)[[c for c in numeric if c != "rate"]].mean()
    agg["p99_reliable"] = rows.groupby("rate", sort=True)["p99_reliable"].all()
    for flag in ("client_limited", "within_goodput_share"):  # booleans: any row of the rate
        if flag in rows:
            agg[flag] = rows.groupby("rate", sort=True)[flag].any().astype(float)
    return agg.reset_index()


def _rate_range(rates: pd.Series, x_scale: str) -> tuple[float, float] | None:
    """The rate axis's limits shared by every block: the finite, positive rates padded by 10 % of the
    span (in log space on a log axis); None when fewer than two distinct rates leave nothing to span."""
    r = pd.to_numeric(rates, errors="coerce").to_numpy(float)
    r = r[np.isfinite(r) & (r > 0)]
    if len(r) == 0 or r.min() == r.max():
        return None
    if x_scale == "log":
        lo, hi = np.log10(r.min()), np.log10(r.max())
        pad = 0.1 * (hi - lo)
        return float(10 ** (lo - pad)), float(10 ** (hi + pad))
    pad = 0.1 * (r.max() - r.min())
    return float(r.min() - pad), float(r.max() + pad)


def serving_figure(frame: pd.DataFrame, out_path: str | Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    plotted = frame[frame["rate"].notna() & frame["status"].isin(["ok", "invalid"])].copy()
    plotted["rate"] = pd.to_numeric(plotted["rate"], errors="coerce")
    plotted["series"] = plotted["library"].astype(str) + " / " + plotted["model"].astype(str)
    plotted.loc[plotted["status"] == "invalid", "series"] += " (invalid)"
    for flag in ("client_limited", "within_goodput_share"):
        if flag in plotted:
            plotted[flag] = _as_bool(plotted[flag], False)
    plotted["p99_reliable"] = (_as_bool(plotted["p99_reliable"], True) if "p99_reliable" in plotted
                               else pd.Series(True, index=plotted.index, dtype=bool))
    comparable = (_as_bool(plotted["comparable"], True) if "comparable" in plotted
                  else pd.Series(True, index=plotted.index, dtype=bool))
    for col, _ in PANELS:
        for c in (col, f"{col}_ci_lo", f"{col}_ci_hi"):
            if c in plotted:
                plotted[c] = pd.to_numeric(plotted[c], errors="coerce")

    names = list(dict.fromkeys(plotted["series"]))  # first-appearance order, as seaborn's hue
    library_of = dict(zip(plotted["series"], plotted["library"].astype(str)))
    library_colours = _series_colours(list(dict.fromkeys(library_of.values())))
    colours = {s: library_colours[library_of[s]] for s in names}  # one colour per library in every facet
    not_comparable = {s for s in names if not comparable[plotted["series"] == s].all()}
    reason_notes = []
    if not_comparable:
        reasons = plotted["comparability_reason"] if "comparability_reason" in plotted else pd.Series("", index=plotted.index)
        for s in names:
            if s in not_comparable:
                reason_notes += reason_lines(s, reasons[(plotted["series"] == s) & ~comparable])
    points = {s: _per_rate(plotted[plotted["series"] == s]) for s in names}

    x_scale = rate_axis_scale(plotted["rate"]) if not plotted.empty else "linear"
    x_range = _rate_range(plotted["rate"], x_scale)
    ncols = (len(PANELS) + 1) // 2
    # One block of panels (two rows) per model: a model's rows are gated against that model's only, and
    # a 13B curve beside 7B ones would read as a slower library.
    models = list(dict.fromkeys(plotted["model"].astype(str))) or [""]
    fig, axes = plt.subplots(2 * len(models), ncols, figsize=(5 * ncols, 8 * len(models)), squeeze=False)
    hollow_drawn = goodput_drawn = inf_drawn = client_drawn = False
    for mi, model in enumerate(models):
        block = plotted[plotted["model"].astype(str) == model] if model else plotted
        block_names = [n for n in names if n in set(block["series"])]
        block_axes = list(axes[2 * mi: 2 * mi + 2].flat)
        for ax, (col, label) in zip(block_axes, PANELS):
            if block.empty or col not in block or block[col].isna().all():
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            else:
                p99_panel = col.endswith("_p99")
                has_ci = f"{col}_ci_lo" in plotted and f"{col}_ci_hi" in plotted
                for s in block_names:
                    pts = points[s]
                    pts = pts[pts[col].notna()] if col in pts else pts.iloc[0:0]
                    if pts.empty:
                        continue
                    faded = s in not_comparable
                    colour, alpha = colours[s], (0.45 if faded else 1.0)
                    x, y = pts["rate"].to_numpy(float), pts[col].to_numpy(float)
                    legend = s + (" (not comparable)" if faded else "")
                    ax.plot(x, y, linestyle="--" if faded else "-", color=colour, alpha=alpha, label=legend)
                    reliable = pts["p99_reliable"].to_numpy(bool) if p99_panel else np.ones(len(pts), dtype=bool)
                    ax.plot(x[reliable], y[reliable], linestyle="none", marker="o", color=colour, alpha=alpha)
                    if (~reliable).any():
                        hollow_drawn = True
                        ax.plot(x[~reliable], y[~reliable], linestyle="none", marker="o", markerfacecolor="white",
                                markeredgecolor=colour, alpha=alpha)
                    if "client_limited" in pts:  # rates the load generator, not the server, may have paced
                        limited = pts["client_limited"].to_numpy(float) > 0
                        if limited.any():
                            client_drawn = True
                            ax.plot(x[limited], y[limited], linestyle="none", marker="o", markersize=12,
                                    markerfacecolor="none", markeredgecolor="red", alpha=alpha)
                    if col == "token_throughput_tok_s":
                        top = int(np.nanargmax(y))  # the peak of the curve (the rate search places it)
                        ax.plot([x[top]], [y[top]], linestyle="none", marker="D", markersize=9, markerfacecolor="none",
                                markeredgecolor=colour, alpha=alpha)
                        inf_rows = plotted[(plotted["series"] == s) & np.isinf(plotted["rate"].to_numpy(float))]
                        if len(inf_rows) and inf_rows[col].notna().any():
                            inf_drawn = True
                            ax.axhline(float(inf_rows[col].mean()), linestyle="-.", linewidth=1, color=colour, alpha=alpha)
                    if col == "token_throughput_tok_s" and "goodput_tok_s" in pts and pts["goodput_tok_s"].notna().any():
                        goodput_drawn = True
                        g = pts["goodput_tok_s"].to_numpy(float)
                        ax.plot(x, g, linestyle=":", marker="x", color=colour, alpha=alpha)
                        # the sweep's own judgement (scenario.goodput_share); CSVs without it: the default share
                        within = (pts["within_goodput_share"].to_numpy(float) > 0 if "within_goodput_share" in pts
                                  else g >= GOODPUT_SHARE * y)
                        if within.any():  # the goodput knee: the highest rate still within the share
                            k = np.flatnonzero(within)[-1]
                            ax.plot([x[k]], [y[k]], linestyle="none", marker="*", markersize=13, color=colour, alpha=alpha)
                    if has_ci and f"{col}_ci_lo" in pts:
                        lo, hi = pts[f"{col}_ci_lo"].to_numpy(float), pts[f"{col}_ci_hi"].to_numpy(float)
                        band = np.isfinite(lo) & np.isfinite(hi)
                        if band.any():
                            ax.fill_between(x, lo, hi, where=band, interpolate=False, color=colour,
                                            alpha=0.2 * alpha, linewidth=0)
                if ax is block_axes[0]:
                    ax.legend(fontsize=8)
            ax.set_xscale(x_scale)
            if x_range:  # every block on one rate axis, so that the models' curves line up
                ax.set_xlim(*x_range)
            if x_scale == "log":  # a block spanning under a decade would label every minor tick
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("request rate (req/s" + (", log scale)" if x_scale == "log" else ")"))
            ax.set_ylabel(label)
            if len(models) > 1:
                ax.set_title(models[mi], fontsize=10)
        for ax in block_axes[len(PANELS):]:
            ax.set_visible(False)

    missing = frame[~frame["status"].isin(["ok", "invalid"])]
    notes = sorted({f"{r.library}/{r.model}: {r.status}"
                    + (f" ({str(r.reason)[:80]})" if isinstance(getattr(r, "reason", None), str) else "")
                    for r in missing.itertuples()})
    footer = []
    if notes:
        footer += ["not plotted:", *notes]
    if reason_notes:
        footer += ["not comparable (dashed):", *reason_notes]
    if hollow_drawn:
        footer.append(HOLLOW_NOTE)
    if not plotted.empty:
        footer.append("throughput panel: hollow diamond = each curve's peak"
                      + ("; dash-dot line = rate inf (every request at once: the server's maximum)" if inf_drawn else ""))
    if client_drawn:
        footer.append("red ring: the client may have set this rate's pace (client_limited: its CPU, send lag or "
                      "achieved rate; see client_limited_reason)")
    if goodput_drawn:
        footer.append("throughput panel: dotted x = goodput (requests within the dataset's SLO, scenario.slo); "
                      "star = the highest rate whose goodput stays within scenario.goodput_share of its throughput")
    if any(f"{col}_ci_lo" in plotted for col, _ in PANELS):
        footer.append("bands: 95 % bootstrap interval over the rate's requests (excludes run-to-run variation)")
    if footer:
        # below the panels, at the same height in inches whatever the number of blocks
        fig.text(0.01, (-0.02 - 0.02 * len(footer)) / len(models), "\n".join(footer), fontsize=8, va="bottom")
    title = title or "serving: throughput and latency vs request rate"
    if "dataset_source" in frame and (frame["dataset_source"].astype(str) == "synthetic").any():
        title += " (SYNTHETIC dataset: random token ids)"
    fig.suptitle(title)
    fig.tight_layout()
    write_figure(out_path, fig)
    plt.close(fig)
