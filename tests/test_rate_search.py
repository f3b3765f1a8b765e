"""The rate search: growth to the throughput peak, bisection, the inf point, its bounds; as pure logic on
made-up curves and through a sweep against a loopback server that saturates."""
import json
import math

import pandas as pd
import pytest

from serving_fixtures import loopback_sweep, write_rows
from inference_eval.config import compose
from inference_eval.serving.rate_search import (Point, SearchConfigError, SearchSettings, SearchState, next_point,
                                                peak)


def _drive(curve, start_rates, settings, fail_above=math.inf):
    """Run the search on ``curve(rate) -> tok/s``; returns the points in run order and the final state."""
    points = [Point(r, "fixed", curve(r), r <= fail_above) for r in start_rates]
    state = SearchState()
    while (step := next_point(points, settings, state)) is not None:
        rate, phase = step
        tok = curve(1e9 if math.isinf(rate) else rate)
        points.append(Point(rate, phase, tok, math.isinf(rate) or rate <= fail_above))
    return points, state


def saturating(rate):  # rises linearly, flat from 40 req/s
    return 10.0 * min(rate, 40.0)


def test_grows_until_flat_then_bisects_then_runs_inf():
    points, state = _drive(saturating, [2.0, 8.0], SearchSettings(enabled=True))
    rates = [p.rate for p in points]
    # 64 still gains 25 % over 32; 128 and 256 gain nothing: two flat steps end the growth
    assert rates[:7] == [2.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
    phases = [p.phase for p in points]
    assert phases == ["fixed"] * 2 + ["grow"] * 5 + ["bisect"] * 2 + ["inf"]
    mids = [p.rate for p in points if p.phase == "bisect"]
    assert mids == pytest.approx([math.sqrt(64 * 128), math.sqrt(64 * math.sqrt(64 * 128))])  # flat: hi moves down
    assert state.bracket == pytest.approx((64.0, math.sqrt(64 * 128)))
    assert "search done" in state.stopped and "gained < 5%" in state.stopped
    assert peak(points).tok_s == 400.0


def test_a_failing_rate_stops_the_growth():
    points, state = _drive(saturating, [2.0, 8.0], SearchSettings(enabled=True, bisect_steps=0), fail_above=20.0)
    assert [p.rate for p in points] == [2.0, 8.0, 16.0, 32.0, math.inf]
    assert state.bracket == (16.0, 32.0) and "failure, SLO break or client limit" in state.stopped


def test_bounds_stop_the_search_and_say_so():
    points, state = _drive(lambda r: r * 10, [2.0], SearchSettings(enabled=True, max_points=5))
    assert len(points) == 5 and state.stopped == "max_points (5) reached"
    state = SearchState()
    assert next_point([Point(2.0, "fixed", 20.0, True)], SearchSettings(enabled=True, time_budget_s=10), state,
                      elapsed_s=11) is None
    assert state.stopped == "time budget (10 s) spent"


def test_settings_come_from_the_scenario_or_the_hardware_and_are_checked():
    assert SearchSettings.from_cfg(compose(["scenario=serving", "hardware=h200"])).enabled is True
    assert SearchSettings.from_cfg(compose(["scenario=serving", "hardware=cpu"])).enabled is False
    s = SearchSettings.from_cfg({"scenario": {"search": {"growth": 3.0}}})
    assert s.enabled is True and s.growth == 3.0
    for bad, key in (({"growth": 1.0}, "growth"), ({"max_points": 0}, "max_points"), ({"rate": 1}, "unknown keys")):
        with pytest.raises(SearchConfigError, match=key):
            SearchSettings.from_cfg({"scenario": {"search": bad}})


def test_sweep_finds_the_peak_of_a_server_that_saturates(tmp_path, monkeypatch):
    """The loopback server with 2 streams at a time and 10 ms a token tops out near 200 tok/s."""
    rows = write_rows(tmp_path / "rows.jsonl", 8, max_tokens=8)
    frame = loopback_sweep(["scenario.rates=[4.0]", "scenario.num_requests=24", "scenario.drop_first=2",
                            "scenario.drop_last=2", "scenario.search={enabled:true,max_points:9,bisect_steps:1}",
                            "+scenario.slo.s2s.ttft_s=1000", "+scenario.slo.s2s.tpot_s=1000"],
                           rows, tmp_path, monkeypatch, ("--token-delay", "0.01", "--max-running", "2"))
    disk = pd.read_csv(tmp_path / "out.csv")
    assert (disk["status"] == "ok").all(), disk["reason"].tolist()
    phases = disk["search_phase"].tolist()
    assert phases[0] == "fixed" and "grow" in phases and phases[-1] == "inf" and len(disk) <= 9
    assert disk["token_throughput_tok_s"].max() < 260  # the server's ceiling: 2 streams / 10 ms a token
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["search"]["stopped"] and record["search"]["peak_rate"] in disk["rate"].tolist()
    assert isinstance(disk["search_note"].iloc[-1], str) and disk["search_note"].iloc[-1] == record["search"]["stopped"]
    assert (tmp_path / "run" / "requests_rateinf.csv").exists()
    assert frame["rate"].iloc[-1] == math.inf


def test_serving_figure_marks_the_peak_and_the_inf_point(tmp_path):
    from inference_eval.serving.figures import serving_figure

    base = {"library": "vllm", "model": "m", "dataset": "s2s", "status": "ok", "p99_reliable": True,
            "sequence_throughput_req_s": 1.0, "mean_latency_per_output_token_s": 0.01, "ttft_s_p50": 0.02,
            "ttft_s_p99": 0.03, "tpot_s_mean": 0.01, "tpot_s_p50": 0.01, "e2e_s_p99": 0.5}
    frame = pd.DataFrame([{**base, "rate": r, "token_throughput_tok_s": t}
                          for r, t in ((2.0, 100), (8.0, 400), (16.0, 380), (math.inf, 420))])
    serving_figure(frame, tmp_path / "fig.png", title="search")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
