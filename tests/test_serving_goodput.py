"""Goodput under latency SLOs: per-request limits, the share meeting each, and the sweep's goodput knee,
in unit tests and through a sweep against the loopback server."""
import json
import math

import pandas as pd
import pytest

from serving_fixtures import loopback_sweep, write_rows
from inference_eval.config import ConfigError, compose
from inference_eval.models.files import ModelFiles
from inference_eval.serving.client import ServedCompletion
from inference_eval.serving.metrics import goodput_knee, goodput_metrics, slo_for
from inference_eval.serving.servers import LoopbackServer
from inference_eval.serving.sweep import ServingConfigError, run_sweep


def _done(i, ttft, tpot, n=11, ok=True):
    first = i + ttft
    return ServedCompletion(id=f"r{i}", output_token_ids=list(range(n if ok else n - 1)), requested_tokens=n,
                            prompt_tokens=4, scheduled_s=float(i), sent_s=float(i), first_token_s=first,
                            end_s=first + tpot * (n - 1), token_times_s=[])


def test_slo_comes_from_default_and_the_task_and_is_checked():
    scenario = compose(["scenario=serving"])["scenario"]
    assert slo_for(scenario, "s2s") == {"ttft_s": 2.0, "tpot_s": 0.2, "e2e_s": None}
    assert slo_for(scenario, "l2s") == {"ttft_s": 4.0, "tpot_s": 0.2, "e2e_s": None}  # long prompts: longer TTFT
    with pytest.raises(ValueError, match="tpot_s must be a positive number"):
        slo_for({"slo": {"default": {"tpot_s": -1}}}, "s2s")
    with pytest.raises(ValueError, match=r"scenario.slo.s2s: unknown keys \['itl_s'\]"):
        slo_for({"slo": {"s2s": {"itl_s": 0.1}}}, "s2s")


def test_goodput_counts_requests_meeting_every_limit():
    slo = {"ttft_s": 0.5, "tpot_s": 0.05, "e2e_s": None}
    done = [_done(0, 0.1, 0.01), _done(1, 0.9, 0.01),   # the second misses TTFT
            _done(2, 0.1, 0.08), _done(3, 0.1, 0.01, ok=False)]  # TPOT miss; a failure meets nothing
    row = goodput_metrics(done, slo)
    duration = done[3].end_s - 0.0
    assert row["slo_met_share"] == 0.25 and row["slo_ttft_met_share"] == 0.5 and row["slo_tpot_met_share"] == 0.5
    assert math.isnan(row["slo_e2e_met_share"]) and row["slo"] == "ttft_s<=0.5 tpot_s<=0.05"
    assert row["goodput_req_s"] == pytest.approx(1 / duration)
    assert row["goodput_tok_s"] == pytest.approx(11 / duration)


def test_goodput_knee_is_the_highest_rate_within_the_share():
    rows = [{"rate": 2.0, "status": "ok", "token_throughput_tok_s": 100, "goodput_tok_s": 100},
            {"rate": 8.0, "status": "ok", "token_throughput_tok_s": 400, "goodput_tok_s": 397},
            {"rate": 32.0, "status": "ok", "token_throughput_tok_s": 900, "goodput_tok_s": 300},
            {"rate": 64.0, "status": "failed"}]
    assert goodput_knee(rows, 0.99) == 8.0
    assert goodput_knee(rows, 0.3) == 32.0
    assert math.isnan(goodput_knee(rows[2:], 0.99))


@pytest.fixture
def rows(tmp_path):
    return write_rows(tmp_path / "rows.jsonl", 6, max_tokens=8)


@pytest.mark.parametrize("tpot_limit,expect_share", [(1.0, 1.0), (0.001, 0.0)])
def test_sweep_rows_carry_goodput_and_the_record_its_knee(rows, tmp_path, monkeypatch, tpot_limit, expect_share):
    """The loopback server streams a token every 10 ms: a 1 s TPOT limit keeps every request, 1 ms none."""
    frame = loopback_sweep(["scenario.rates=[10.0,20.0]", "scenario.num_requests=8", "scenario.drop_first=1",
                            "scenario.drop_last=1", f"+scenario.slo.s2s.tpot_s={tpot_limit}"],
                           rows, tmp_path, monkeypatch, ("--token-delay", "0.01"))
    disk = pd.read_csv(tmp_path / "out.csv")
    assert (disk["status"] == "ok").all()
    assert disk["slo_met_share"].tolist() == [expect_share, expect_share]
    assert disk["slo"].iloc[0] == f"ttft_s<=2 tpot_s<={tpot_limit:g}"
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    if expect_share == 1.0:
        assert disk["goodput_tok_s"].tolist() == pytest.approx(disk["token_throughput_tok_s"].tolist())
        assert disk["within_goodput_share"].all() and record["slo"]["goodput_knee_rate"] == 20.0
    else:
        assert (disk["goodput_tok_s"] == 0).all() and not disk["within_goodput_share"].any()
        assert record["slo"]["goodput_knee_rate"] is None  # no rate kept 99 % of its tokens within the SLO
    assert frame["goodput_req_s"].notna().all()


def test_a_bad_slo_stops_the_sweep_naming_the_key(rows, tmp_path):
    with pytest.raises(ConfigError, match=r"scenario\.slo\.s2s\.ttft_s = 'abc' is not allowed"):
        compose(["scenario=serving", "library=vllm", "model=tiny-llama", "hardware=cpu",
                 "+scenario.slo.s2s.ttft_s=abc"])  # the schema stops it when composing
    cfg = compose(["scenario=serving", "library=vllm", "model=tiny-llama", "hardware=cpu"])
    cfg["scenario"]["slo"]["s2s"] = {"ttft_s": "abc"}  # a config that bypassed composition: the sweep stops
    with pytest.raises(ServingConfigError, match="ttft_s must be a positive number"):
        run_sweep(cfg, rows, ModelFiles(), tmp_path / "out.csv", tmp_path / "run", spec=LoopbackServer(), dataset="s2s")


def test_serving_figure_draws_goodput_and_its_knee(tmp_path):
    from inference_eval.serving.figures import serving_figure

    base = {"library": "vllm", "model": "m", "dataset": "s2s", "status": "ok", "p99_reliable": True,
            "sequence_throughput_req_s": 1.0, "mean_latency_per_output_token_s": 0.01, "ttft_s_p50": 0.02,
            "ttft_s_p99": 0.03, "tpot_s_mean": 0.01, "tpot_s_p50": 0.01, "e2e_s_p99": 0.5}
    frame = pd.DataFrame([{**base, "rate": r, "token_throughput_tok_s": t, "goodput_tok_s": g}
                          for r, t, g in ((2.0, 100, 100), (8.0, 400, 399), (32.0, 900, 200))])
    out = tmp_path / "fig.png"
    serving_figure(frame, out, title="goodput")
    assert out.stat().st_size > 10_000
    serving_figure(frame.drop(columns=["goodput_tok_s"]), tmp_path / "old.png")  # a CSV from before goodput
    assert (tmp_path / "old.png").stat().st_size > 10_000
