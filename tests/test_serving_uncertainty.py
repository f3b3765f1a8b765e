"""Bootstrap confidence intervals and p99 reliability of serving rows, and the figure that draws them."""
import math

import numpy as np
import pandas as pd
import pytest

from inference_eval.serving.client import ServedCompletion
from inference_eval.serving.metrics import CI_COLUMNS, CI_METRICS, P99_MIN_REQUESTS, rate_metrics

CI_METRIC_NAMES = ("token_throughput_tok_s", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "e2e_s_p50",
                   "e2e_s_p99")


def _completions(n, seed=0, gap=0.05, fixed_tokens=None):
    """``n`` successful streamed requests with lognormal TTFT/TPOT and varied output lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sched = i * gap
        ttft = float(rng.lognormal(-2.0, 0.5))
        tokens = fixed_tokens or int(rng.integers(8, 128))
        tpot = float(rng.lognormal(-4.0, 0.3))
        first, end = sched + ttft, sched + ttft + tpot * (tokens - 1)
        out.append(ServedCompletion(id=str(i), output_token_ids=list(range(tokens)), requested_tokens=tokens,
                                    scheduled_s=sched, sent_s=sched + 1e-4, first_token_s=first, end_s=end,
                                    token_times_s=list(np.linspace(first, end, tokens)), finish_reason="length"))
    return out


def _failed(i, sched):
    return ServedCompletion(id=f"f{i}", requested_tokens=16, error="HTTP 500: boom", scheduled_s=sched,
                            sent_s=sched + 1e-4, end_s=sched + 0.01, http_status=500)


def test_ci_columns_are_named_and_ordered():
    assert CI_METRICS == CI_METRIC_NAMES
    assert CI_COLUMNS == (*(f"{m}_ci_{s}" for m in CI_METRIC_NAMES for s in ("lo", "hi")), "p99_reliable")
    m = rate_metrics(_completions(20), 20.0)
    assert set(CI_COLUMNS) <= set(m)


def test_sweep_columns_hold_the_ci_columns_together():
    from inference_eval.serving.sweep import COLUMNS
    start = COLUMNS.index(CI_COLUMNS[0])
    assert COLUMNS[start:start + len(CI_COLUMNS)] == CI_COLUMNS
    assert len(set(COLUMNS)) == len(COLUMNS)


def test_interval_contains_point_estimate_and_is_ordered():
    m = rate_metrics(_completions(500, seed=3), 20.0)
    for name in CI_METRIC_NAMES:
        lo, est, hi = m[f"{name}_ci_lo"], m[name], m[f"{name}_ci_hi"]
        assert np.isfinite(lo) and np.isfinite(hi), name
        assert lo <= est <= hi, (name, lo, est, hi)
        assert lo < hi, name  # the sample varies, so the interval is not a point


def test_throughput_interval_by_hand():
    # resampling requests and summing their tokens over the same window: the interval lies within
    # [n * min tokens, n * max tokens] / duration, and collapses to a point when every output has one length
    cs = _completions(300, seed=5)
    m = rate_metrics(cs, 20.0)
    toks = np.array([c.output_tokens for c in cs])
    assert len(cs) * toks.min() / m["duration_s"] < m["token_throughput_tok_s_ci_lo"]
    assert m["token_throughput_tok_s_ci_hi"] < len(cs) * toks.max() / m["duration_s"]
    mean_tok, sd_tok = toks.mean(), toks.std()
    # normal approximation of the sum's spread: half-width ~ 1.96 * sqrt(n) * sd / duration
    half = (m["token_throughput_tok_s_ci_hi"] - m["token_throughput_tok_s_ci_lo"]) / 2
    assert half == pytest.approx(1.96 * math.sqrt(len(cs)) * sd_tok / m["duration_s"], rel=0.15)
    assert m["token_throughput_tok_s"] == pytest.approx(len(cs) * mean_tok / m["duration_s"])
    fixed = rate_metrics(_completions(300, seed=5, fixed_tokens=32), 20.0)
    assert fixed["token_throughput_tok_s_ci_lo"] == pytest.approx(fixed["token_throughput_tok_s"])
    assert fixed["token_throughput_tok_s_ci_hi"] == pytest.approx(fixed["token_throughput_tok_s"])


def test_interval_narrows_with_more_requests():
    few = _completions(50, seed=11)
    small = rate_metrics(few, 20.0)
    large = rate_metrics(_completions(2000, seed=11), 20.0)
    for name in ("ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "e2e_s_p50", "e2e_s_p99"):
        w_small = small[f"{name}_ci_hi"] - small[f"{name}_ci_lo"]
        w_large = large[f"{name}_ci_hi"] - large[f"{name}_ci_lo"]
        # the median's interval shrinks like 1/sqrt(n); the p99's at 50 requests is already too narrow
        # (it cannot reach past the slowest request seen: see below), so it only has to shrink
        assert w_large < (0.6 if name.endswith("_p50") else 1.0) * w_small, (name, w_small, w_large)
    # why p99 needs >= 100 requests: with 50 its bootstrap interval is capped by the single slowest request
    assert small["ttft_s_p99_ci_hi"] <= max(c.first_token_s - c.scheduled_s for c in few)
    assert small["p99_reliable"] is False and large["p99_reliable"] is True
    # throughput: relative width shrinks like 1/sqrt(n)
    rel = lambda m: (m["token_throughput_tok_s_ci_hi"] - m["token_throughput_tok_s_ci_lo"]) / m["token_throughput_tok_s"]
    assert rel(large) < 0.4 * rel(small)


def test_seed_reproducible_and_different_seed_differs_slightly():
    cs = _completions(400, seed=2)
    a = rate_metrics(cs, 20.0, seed=1)
    b = rate_metrics(cs, 20.0, seed=1)
    c = rate_metrics(cs, 20.0, seed=2)
    cols = [k for k in CI_COLUMNS if k != "p99_reliable"]
    assert [a[k] for k in cols] == [b[k] for k in cols]
    assert any(a[k] != c[k] for k in cols)
    for k in cols:  # a different seed moves the bounds by a little, not a lot
        metric = k.rsplit("_ci_", 1)[0]
        assert abs(a[k] - c[k]) < 0.1 * a[metric], k
    # the point estimates never depend on the bootstrap
    assert a["ttft_s_p99"] == c["ttft_s_p99"] == rate_metrics(cs, 20.0, bootstrap=0)["ttft_s_p99"]


def test_number_of_resamples_is_used():
    cs = _completions(200, seed=4)
    few = rate_metrics(cs, 20.0, bootstrap=20, seed=0)
    many = rate_metrics(cs, 20.0, bootstrap=1000, seed=0)
    assert few["e2e_s_p50_ci_lo"] != many["e2e_s_p50_ci_lo"]
    with pytest.raises(ValueError, match="bootstrap"):
        rate_metrics(cs, 20.0, bootstrap=-1)


@pytest.mark.parametrize("n_ok", [0, 1])
def test_nan_intervals_below_two_successful_requests(n_ok):
    cs = _completions(n_ok) + [_failed(i, 10.0 + i) for i in range(3)]
    m = rate_metrics(cs, 1.0)
    assert m["n_ok"] == n_ok
    for k in CI_COLUMNS:
        if k != "p99_reliable":
            assert math.isnan(m[k]), k
    assert m["p99_reliable"] is False


def test_bootstrap_zero_turns_intervals_off():
    m = rate_metrics(_completions(200), 20.0, bootstrap=0)
    for k in CI_COLUMNS:
        if k != "p99_reliable":
            assert math.isnan(m[k]), k
    assert m["p99_reliable"] is True  # reliability does not depend on the bootstrap
    assert np.isfinite(m["ttft_s_p99"])


def test_failures_are_not_resampled():
    ok = _completions(100, seed=8)
    with_failures = ok + [_failed(i, ok[-1].scheduled_s + 0.001 * (i + 1) - 1.0) for i in range(20)]
    a, b = rate_metrics(ok, 20.0), rate_metrics(with_failures, 20.0)
    assert b["n_failed"] == 20
    for name in ("ttft_s_p50", "ttft_s_p99", "e2e_s_p99"):
        assert (a[f"{name}_ci_lo"], a[f"{name}_ci_hi"]) == (b[f"{name}_ci_lo"], b[f"{name}_ci_hi"])


def test_p99_reliable_threshold_counts_successful_measured_requests():
    assert P99_MIN_REQUESTS == 100
    assert rate_metrics(_completions(99), 20.0)["p99_reliable"] is False
    assert rate_metrics(_completions(100), 20.0)["p99_reliable"] is True
    # 100 successful + failures, but only 99 successful: not reliable
    cs = _completions(99) + [_failed(0, 1.0)]
    m = rate_metrics(cs, 20.0)
    assert (m["n_measured"], m["n_ok"], m["p99_reliable"]) == (100, 99, False)
    # warm-up and drain requests do not count: 102 successful, 3 dropped -> 99 measured
    m = rate_metrics(_completions(102), 20.0, drop_first=2, drop_last=1)
    assert (m["n_ok"], m["p99_reliable"]) == (99, False)
    m = rate_metrics(_completions(103), 20.0, drop_first=2, drop_last=1)
    assert (m["n_ok"], m["p99_reliable"]) == (100, True)


def test_bootstrap_is_fast():
    import time
    cs = _completions(1000, seed=1)
    rate_metrics(cs, 20.0)  # warm up imports and caches
    t0 = time.perf_counter()
    rate_metrics(cs, 20.0, bootstrap=1000)
    assert time.perf_counter() - t0 < 1.0


# --- figures ---------------------------------------------------------------------------------------------

def _sweep_rows(library, model="tiny-llama", rates=(5.0, 10.0, 20.0), n=(50, 150, 300), seed=0, **extra):
    rows = []
    for i, (rate, k) in enumerate(zip(rates, n)):
        m = rate_metrics(_completions(k, seed=seed + i, gap=1.0 / rate), rate, bootstrap=200)
        rows.append({"library": library, "model": model, "dataset": "s2s", "dataset_source": "real",
                     "hardware": "cpu", "rate": rate, "status": "ok", "reason": None, **m, **extra})
    return rows


def _old_columns():
    from inference_eval.serving.sweep import COLUMNS
    return [c for c in COLUMNS if c not in CI_COLUMNS]


def _png_ok(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_figure_with_intervals(tmp_path):
    from inference_eval.serving.figures import serving_figure
    frame = pd.DataFrame(_sweep_rows("vllm") + _sweep_rows("llamacpp", seed=10)
                         + [{"library": "mii", "model": "tiny-llama", "rate": None, "status": "not_installed",
                             "reason": "deepspeed-mii is not installed"}])
    assert not frame["p99_reliable"].dropna().all()  # the 50-request rates are drawn hollow
    out = tmp_path / "fig" / "serving_ci.png"
    serving_figure(frame, out)
    _png_ok(out)


def _drawn(monkeypatch):
    """The figures serving_figure writes, still open (the PNG is written as well): ``[(path, fig), ...]``."""
    from inference_eval.serving import figures
    real, drawn = figures.write_figure, []

    def keep(path, fig):
        real(path, fig)
        drawn.append((path, fig))
    monkeypatch.setattr(figures, "write_figure", keep)
    return drawn


def _axis(fig, col):
    from inference_eval.serving.figures import PANELS
    label = dict(PANELS)[col]
    return next(ax for ax in fig.axes if ax.get_ylabel() == label)


def test_figure_after_csv_round_trip(tmp_path, monkeypatch):
    """Read back from CSV (bools as strings): the 50-request rate is still hollow in the p99 panels, and
    the interval bands are still drawn."""
    import matplotlib.pyplot as plt
    from inference_eval.serving.figures import load_sweeps, serving_figure
    from inference_eval.serving.sweep import COLUMNS
    drawn = _drawn(monkeypatch)
    csv = tmp_path / "sweep.csv"
    pd.DataFrame(_sweep_rows("vllm")).reindex(columns=list(COLUMNS)).to_csv(csv, index=False)
    out = tmp_path / "serving_csv.png"
    serving_figure(load_sweeps([csv]), out)
    _png_ok(out)
    (_, fig), = drawn
    hollow = [ln for ln in _axis(fig, "ttft_s_p99").lines if ln.get_markerfacecolor() == "white"]
    assert [list(ln.get_xdata()) for ln in hollow] == [[5.0]]
    assert _axis(fig, "ttft_s_p50").collections, "no interval band"
    plt.close(fig)


def test_figure_with_non_comparable_series(tmp_path, monkeypatch):
    """The not-comparable series is dashed and labelled so, also when the flags come back from a CSV as
    strings and NaN (a missing flag counts as comparable)."""
    import matplotlib.pyplot as plt
    from inference_eval.serving.figures import serving_figure
    drawn = _drawn(monkeypatch)
    rows = (_sweep_rows("vllm", comparable=True, comparability_reason="")
            + _sweep_rows("sglang", seed=20, comparable=False, comparability_reason="prefix caching on"))
    out = tmp_path / "serving_cmp.png"
    serving_figure(pd.DataFrame(rows), out)
    _png_ok(out)
    # as read back from a CSV: strings / NaN instead of bools
    frame = pd.DataFrame(rows)
    frame["comparable"] = frame["comparable"].map({True: "True", False: "False"})
    frame.loc[0, "comparable"] = np.nan
    out2 = tmp_path / "serving_cmp_csv.png"
    serving_figure(frame, out2)
    _png_ok(out2)
    for _, fig in drawn:
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert legend == ["vllm / tiny-llama", "sglang / tiny-llama (not comparable)"]
        styles = {ln.get_label(): ln.get_linestyle() for ln in fig.axes[0].lines if not ln.get_label().startswith("_")}
        assert styles == {"vllm / tiny-llama": "-", "sglang / tiny-llama (not comparable)": "--"}
        plt.close(fig)


def test_figure_old_csv_without_new_columns(tmp_path):
    from inference_eval.serving.figures import load_sweeps, serving_figure
    old = pd.DataFrame(_sweep_rows("vllm") + _sweep_rows("llamacpp", seed=10)).reindex(columns=_old_columns())
    assert not any(c in old for c in CI_COLUMNS) and "comparable" not in old
    csv = tmp_path / "old_sweep.csv"
    old.to_csv(csv, index=False)
    out = tmp_path / "serving_old.png"
    serving_figure(load_sweeps([csv]), out)
    _png_ok(out)


def test_figure_draws_bands_dashes_and_hollow_markers(tmp_path, monkeypatch):
    """What is drawn, not only that a file appears: bands in CI panels, dashed faded non-comparable line,
    hollow markers only in p99 panels, and the notes under the plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from inference_eval.serving import figures

    captured = {}
    monkeypatch.setattr(figures, "write_figure", lambda path, fig: captured.setdefault("fig", fig))
    rows = _sweep_rows("vllm") + _sweep_rows("sglang", seed=20, comparable=False,
                                               comparability_reason="prefix caching on")
    for r in rows[:3]:
        r["comparable"], r["comparability_reason"] = True, ""
    figures.serving_figure(pd.DataFrame(rows), tmp_path / "x.png")
    fig = captured["fig"]
    axes = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_visible()}
    panels = dict((label, col) for col, label in figures.PANELS)
    for label, ax in axes.items():
        col = panels[label]
        n_bands = sum(type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection") for c in ax.collections)
        assert n_bands == (2 if f"{col}_ci_lo" in rows[0] else 0), label
        hollow = [ln for ln in ax.lines if ln.get_markerfacecolor() == "white"]
        assert bool(hollow) == col.endswith("_p99"), label
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["vllm / tiny-llama", "sglang / tiny-llama (not comparable)"]
    dashed = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]
    assert dashed and all(ln.get_alpha() < 1 for ln in dashed)
    text = "\n".join(t.get_text() for t in fig.texts)
    assert "sglang / tiny-llama: prefix caching on" in text and figures.HOLLOW_NOTE in text
    plt.close(fig)


def test_rate_axis_is_logarithmic_for_a_searched_sweep_and_reasons_are_wrapped_not_cut(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from inference_eval.serving import figures

    assert figures.rate_axis_scale([2.0, 8.0, 32.0]) == "linear"  # a 16x span: linear
    assert figures.rate_axis_scale([2.0, 8.0, 32.0, 64.0, float("inf")]) == "log"  # inf is not a rate on the axis
    assert figures.rate_axis_scale([]) == "linear"
    long_reason = ("requests_sha256=0bc620bda3d6 (others 3c5385eef262); prefix_caching=on (others off); "
                   "sampling=greedy (others forced by the server); prompt_route=text (others token ids)")
    lines = figures.reason_lines("llamacpp / llama2-7b", [long_reason, long_reason, None])
    assert len(lines) == 2 and all(len(line) <= figures.REASON_WIDTH for line in lines)
    assert " ".join(line.strip() for line in lines) == f"llamacpp / llama2-7b: {long_reason}"  # nothing cut

    captured = {}
    monkeypatch.setattr(figures, "write_figure", lambda path, fig: captured.setdefault("fig", fig))
    rows = (_sweep_rows("vllm", rates=(2.0, 32.0, 512.0), comparable=True, comparability_reason="")
            + _sweep_rows("llamacpp", rates=(1.0, 4.0, 8.0), seed=30, comparable=False,
                          comparability_reason=long_reason))
    figures.serving_figure(pd.DataFrame(rows), tmp_path / "x.png")
    fig = captured["fig"]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert all(ax.get_xscale() == "log" and "log scale" in ax.get_xlabel() for ax in visible)
    text = "\n".join(t.get_text() for t in fig.texts)
    assert "prompt_route=text (others token ids)" in text  # the end of the long reason is there
    plt.close(fig)
