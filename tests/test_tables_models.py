"""Dataset tables of several models: one group of rows per model, the fairness gate within each group,
each model's own roofline bound, a throughput figure with one panel per model and serving figures with one
block of panels per model."""
import copy
import json

import pandas as pd
import pytest

from inference_eval import fairness
from inference_eval.config import compose
from inference_eval.report.batch_figures import throughput_figure
from inference_eval.report.tables import dataset_table
from inference_eval.requests import Request

# Two models tokenize the same rows differently: their requests' sha256 differ.
REQUESTS = {"tiny-llama": [Request(f"r{i}", (1, 100 + i, 200 + i), 4 + i) for i in range(4)],
            "tiny-mistral": [Request(f"r{i}", (1, 300 + i), 4 + i) for i in range(4)]}


def _manifest(model, library="vllm"):
    cfg = compose([f"library={library}", f"model={model}", "hardware=cpu", "dataset=s2s-synthetic"])
    return fairness.manifest(cfg, "batch", REQUESTS[model], exact=True, n_exact=len(REQUESTS[model]))


def _record(tmp_path, library, model, manifest=None, total=2.0, status="ok"):
    manifest = _manifest(model, library) if manifest is None else manifest
    rec = {"kind": "batch", "library": library, "model": model, "dataset": "s2s", "hardware": "cpu",
           "status": status, "reason": "", "total_time_s": total, "token_throughput_tok_s": 10.0 / total,
           "repeats": 3, "fairness": manifest}
    path = tmp_path / f"{library}_{model}.json"
    path.write_text(json.dumps(rec))
    return path


def _bound(tmp_path, models):
    path = tmp_path / "s2s_bound.csv"
    pd.DataFrame([{"model": m, "dataset": "s2s", "status": "ok", "reason": "", "bound_s": b}
                  for m, b in models.items()]).to_csv(path, index=False)
    return path


def test_two_models_give_one_table_with_a_group_per_model_each_with_its_own_bound(tmp_path):
    paths = [_record(tmp_path, "vllm", "tiny-mistral", total=4.0), _record(tmp_path, "vllm", "tiny-llama"),
             _record(tmp_path, "transformers", "tiny-mistral", total=8.0),
             _record(tmp_path, "transformers", "tiny-llama", total=1.0)]
    table = dataset_table(paths, _bound(tmp_path, {"tiny-llama": 0.5, "tiny-mistral": 1.0}))
    assert list(zip(table["model"], table["library"])) == [
        ("tiny-llama", "transformers"), ("tiny-llama", "vllm"),
        ("tiny-mistral", "transformers"), ("tiny-mistral", "vllm")]
    # the models' requests differ (their tokenizers): still every row is comparable within its group
    assert table["comparable"].tolist() == [True] * 4, table["comparability_reason"].tolist()
    assert table["bound_s"].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert table["efficiency"].tolist() == [0.5, 0.25, 0.125, 0.25]
    assert table["bound_reason"].tolist() == [""] * 4


def test_a_model_the_bound_table_lacks_has_empty_bound_cells_with_the_reason(tmp_path):
    paths = [_record(tmp_path, "vllm", "tiny-llama"), _record(tmp_path, "vllm", "tiny-mistral")]
    table = dataset_table(paths, _bound(tmp_path, {"tiny-llama": 0.5})).set_index("model")
    assert table.loc["tiny-llama", "bound_s"] == 0.5 and table.loc["tiny-llama", "bound_reason"] == ""
    assert pd.isna(table.loc["tiny-mistral", "bound_s"]) and pd.isna(table.loc["tiny-mistral", "efficiency"])
    assert table.loc["tiny-mistral", "bound_reason"] == \
        "no roofline bound for tiny-mistral in s2s_bound.csv (it bounds tiny-llama)"
    missing = dataset_table(paths, tmp_path / "absent_bound.csv")
    assert missing["bound_reason"].str.startswith("no roofline bound table: ").all()


def test_a_failed_bound_row_gives_its_status_and_reason(tmp_path):
    bound = tmp_path / "s2s_bound.csv"
    pd.DataFrame([{"model": "tiny-llama", "status": "does_not_fit", "reason": "weights exceed memory",
                   "bound_s": None}]).to_csv(bound, index=False)
    table = dataset_table([_record(tmp_path, "vllm", "tiny-llama")], bound)
    assert table["bound_reason"].tolist() == ["roofline bound does_not_fit: weights exceed memory"]


@pytest.mark.parametrize("key", [k for k in fairness.COMPARABILITY_KEYS if k != "model"])
def test_the_gate_flags_a_differing_row_within_its_model_group_only(tmp_path, key):
    odd = copy.deepcopy(_manifest("tiny-mistral", "llamacpp"))
    {"hardware": lambda m: m.update(hardware="h200"), "dataset": lambda m: m.update(dataset="l2s"),
     "requests_sha256": lambda m: m.update(requests_sha256="f" * 64), "row_limit": lambda m: m.update(row_limit=64),
     "max_tokens_cap": lambda m: m.update(max_tokens_cap=128), "exact": lambda m: m.update(exact=False),
     "prefix_caching": lambda m: m["settings"].update(prefix_caching=True)}[key](odd)
    paths = [_record(tmp_path, lib, "tiny-llama") for lib in ("vllm", "transformers", "llamacpp")]
    paths += [_record(tmp_path, lib, "tiny-mistral") for lib in ("vllm", "transformers")]
    paths.append(_record(tmp_path, "llamacpp", "tiny-mistral", manifest=odd))
    table = dataset_table(paths).set_index(["model", "library"])
    flagged = table[table["comparable"] == False]  # noqa: E712
    assert list(flagged.index) == [("tiny-mistral", "llamacpp")]
    assert flagged["comparability_reason"].iloc[0].startswith(f"{key}="), flagged["comparability_reason"].iloc[0]
    assert (table.loc["tiny-llama", "comparability_reason"] == "").all()


def test_a_record_whose_manifest_names_another_model_is_flagged_in_its_group(tmp_path):
    paths = [_record(tmp_path, "vllm", "tiny-llama"), _record(tmp_path, "transformers", "tiny-llama"),
             _record(tmp_path, "llamacpp", "tiny-llama", manifest=_manifest("tiny-mistral", "llamacpp"))]
    table = dataset_table(paths).set_index("library")
    assert table.loc["llamacpp", "comparable"] == False  # noqa: E712
    assert "model=tiny-mistral (others tiny-llama)" in table.loc["llamacpp", "comparability_reason"]


def test_gate_groups_answers_in_row_order_and_checks_its_arguments():
    a, b = _manifest("tiny-llama"), _manifest("tiny-mistral")
    odd = copy.deepcopy(b)
    odd["row_limit"] = 7
    flags = fairness.gate_groups([a, b, odd, b, {"no_result": True}],
                                 ["tiny-llama", "tiny-mistral", "tiny-mistral", "tiny-mistral", "tiny-llama"])
    assert [f[0] for f in flags] == [True, True, False, True, None]
    assert flags[2][1].startswith("row_limit=7")
    # one gate over all rows would call the second model's rows incomparable
    assert [f[0] for f in fairness.gate([a, b, b])] == [False, True, True]
    with pytest.raises(ValueError, match="3 manifests but 2 group labels"):
        fairness.gate_groups([a, b, b], ["x", "y"])


def test_serving_rows_are_gated_per_model():
    base = {"status": "ok", "hardware": "cpu", "dataset": "l2s", "row_limit": 64, "max_tokens_cap": None,
            "exact": True, "prefix_caching": False, "prefix_cache_hit_rate": 0.0, "rate": 8.0}
    frame = pd.DataFrame([{**base, "library": "vllm", "model": "a", "requests_sha256": "1" * 64},
                          {**base, "library": "mii", "model": "a", "requests_sha256": "1" * 64},
                          {**base, "library": "vllm", "model": "b", "requests_sha256": "2" * 64},
                          {**base, "library": "mii", "model": "b", "requests_sha256": "3" * 64}])
    gated = fairness.gate_frame(frame).set_index(["model", "library"])
    assert bool(gated.loc[("a", "vllm"), "comparable"]) and bool(gated.loc[("a", "mii"), "comparable"])
    assert gated.loc[("b", "mii"), "comparable"] == False  # noqa: E712  (a tie: the first row is the reference)
    assert gated.loc[("b", "mii"), "comparability_reason"].startswith("requests_sha256=")


def _figure_tables(tmp_path):
    llama = [_record(tmp_path, lib, "tiny-llama", total=t) for lib, t in (("vllm", 1.0), ("transformers", 4.0))]
    odd = copy.deepcopy(_manifest("tiny-mistral", "transformers"))
    odd["row_limit"] = 3
    mistral = [_record(tmp_path, "vllm", "tiny-mistral", total=2.0),
               _record(tmp_path, "transformers", "tiny-mistral", manifest=odd, total=5.0),
               _record(tmp_path, "llamacpp", "tiny-mistral", status="failed")]
    s2s = dataset_table(llama + mistral)
    l2s = dataset_table(llama[:1])
    return {"s2s": s2s, "l2s": l2s}


def test_the_throughput_figure_has_one_panel_per_model_and_marks_incomparable_rows(tmp_path):
    import matplotlib.pyplot as plt

    fig = throughput_figure(_figure_tables(tmp_path), "batch throughput")
    try:
        assert [ax.get_title() for ax in fig.axes] == ["tiny-llama", "tiny-mistral"]
        llama, mistral = fig.axes
        assert [t.get_text() for t in llama.get_xticklabels()] == ["s2s", "l2s"]
        assert [t.get_text() for t in mistral.get_xticklabels()] == ["s2s"]
        assert len(llama.patches) == 3 and len(mistral.patches) == 2  # the failed row has no bar
        hatched = [p for p in mistral.patches if p.get_hatch()]
        assert len(hatched) == 1 and hatched[0].get_height() == pytest.approx(10.0 / 5.0)
        assert not any(p.get_hatch() for p in llama.patches)
        assert "failed" in [t.get_text() for t in mistral.texts]
        note = "\n".join(t.get_text() for t in fig.texts)
        assert "s2s tiny-mistral TRF: row_limit=3" in note
        # one legend for the figure: each library once, in one colour in every panel
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == ["TRF", "vLLM", "not comparable"]
        vllm = [[p.get_facecolor()[:3] for p in ax.patches if p.get_height() in (10.0, 5.0)] for ax in fig.axes]
        assert len(vllm[0]) == 2 and len(vllm[1]) == 1 and vllm[0][0] == vllm[1][0]
    finally:
        plt.close(fig)


def test_the_throughput_figure_needs_a_table():
    with pytest.raises(ValueError, match="no dataset tables"):
        throughput_figure({}, "t")


def test_the_serving_figure_has_one_block_of_panels_per_model_with_a_colour_per_library(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from inference_eval.serving import figures

    captured = {}
    monkeypatch.setattr(figures, "write_figure", lambda path, fig: captured.setdefault("fig", fig))
    rows = [{"library": lib, "model": model, "status": "ok", "rate": rate, "token_throughput_tok_s": tput * rate}
            for model, libs in (("llama2-7b", ("vllm", "mii")), ("llama2-13b", ("vllm",)))
            for lib, tput in zip(libs, (10.0, 7.0)) for rate in (2.0, 8.0)]
    figures.serving_figure(pd.DataFrame(rows), tmp_path / "x.png")
    fig = captured["fig"]
    try:
        n = len(figures.PANELS)
        assert len(fig.axes) == 2 * n
        assert [ax.get_title() for ax in fig.axes] == ["llama2-7b"] * n + ["llama2-13b"] * n
        first_7b, first_13b = fig.axes[0], fig.axes[n]
        assert [t.get_text() for t in first_7b.get_legend().get_texts()] == ["vllm / llama2-7b", "mii / llama2-7b"]
        assert [t.get_text() for t in first_13b.get_legend().get_texts()] == ["vllm / llama2-13b"]
        curve = {ln.get_label(): ln for ax in (first_7b, first_13b) for ln in ax.lines
                 if not ln.get_label().startswith("_")}
        assert list(curve["vllm / llama2-13b"].get_ydata()) == [20.0, 80.0]
        assert curve["vllm / llama2-7b"].get_color() == curve["vllm / llama2-13b"].get_color()
        assert curve["mii / llama2-7b"].get_color() != curve["vllm / llama2-7b"].get_color()
    finally:
        plt.close(fig)
