"""Arrival schedules and per-rate metrics (pure functions of our own code)."""
import math

import numpy as np
import pytest

from inference_eval.requests import Completion
from inference_eval.serving.metrics import measured_window, rate_metrics
from inference_eval.serving.schedule import make_schedule


def test_schedule_is_reproducible_and_per_rate():
    a = make_schedule(500, 4.0, "poisson", seed=7)
    b = make_schedule(500, 4.0, "poisson", seed=7)
    assert np.array_equal(a.offsets_s, b.offsets_s)
    assert not np.array_equal(a.offsets_s, make_schedule(500, 4.0, "poisson", seed=8).offsets_s)
    assert a.offsets_s[0] == 0 and np.all(np.diff(a.offsets_s) >= 0)


@pytest.mark.parametrize("arrival,shape,cv", [("poisson", 1.0, 1.0), ("gamma", 0.25, 2.0), ("gamma", 4.0, 0.5)])
def test_arrival_rate_and_burstiness(arrival, shape, cv):
    s = make_schedule(20001, 10.0, arrival, burstiness=shape, seed=1)
    gaps = np.diff(s.offsets_s)
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)  # gamma CV = 1/sqrt(shape)


def test_constant_and_infinite_rate():
    assert np.allclose(np.diff(make_schedule(5, 2.0, "constant").offsets_s), 0.5)
    assert np.all(make_schedule(5, math.inf).offsets_s == 0)


@pytest.mark.parametrize("bad", [dict(n=0, rate=1.0), dict(n=3, rate=0.0), dict(n=3, rate=1.0, arrival="uniform"),
                                 dict(n=3, rate=1.0, arrival="gamma", burstiness=0.0)])
def test_schedule_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        make_schedule(**bad)


def _c(i, sched, sent, first, end, n, want=None, err="", times=None):
    return Completion(id=str(i), output_token_ids=list(range(n)), requested_tokens=want or n, error=err,
                      scheduled_s=sched, sent_s=sent, first_token_s=first, end_s=end,
                      token_times_s=times or list(np.linspace(first, end, n)))


def test_rate_metrics_by_hand():
    cs = [
        _c(0, 0.0, 0.001, 0.1, 0.5, 5),    # dropped (first)
        _c(1, 1.0, 1.002, 1.2, 2.0, 5),    # e2e 1.0, ttft .2, tpot .2
        _c(2, 2.0, 2.003, 2.1, 2.5, 3),    # e2e .5, ttft .1, tpot .2
        _c(3, 3.0, 3.001, 3.5, 4.0, 2, want=4),  # short: failure
        _c(4, 4.0, 4.001, 0.0, 4.1, 0, want=4, err="HTTP 500: boom"),  # dropped (last) but counted as failure
    ]
    m = rate_metrics(cs, 1.0, drop_first=1, drop_last=1)
    assert (m["n_measured"], m["n_ok"], m["n_failed"], m["n_failed_total"]) == (3, 2, 1, 2)
    assert m["failures"] == "HTTP 500 x1; length x1"
    assert m["duration_s"] == pytest.approx(3.0)            # scheduled 1.0 .. end 4.0
    assert m["output_tokens"] == 8
    assert m["sequence_throughput_req_s"] == pytest.approx(2 / 3)
    assert m["token_throughput_tok_s"] == pytest.approx(8 / 3)
    assert m["e2e_s_mean"] == pytest.approx(0.75)
    assert m["ttft_s_mean"] == pytest.approx(0.15)
    assert m["tpot_s_mean"] == pytest.approx(0.2)
    assert m["mean_latency_per_output_token_s"] == pytest.approx((1.0 / 5 + 0.5 / 3) / 2)
    assert m["itl_s_p50"] == pytest.approx(0.2)
    assert m["send_lag_max_s"] == pytest.approx(0.003, abs=1e-9)
    assert m["achieved_rate"] == pytest.approx(2 / (3.001 - 1.002))


def test_drop_too_many_is_an_error():
    with pytest.raises(ValueError, match="nothing left"):
        measured_window([_c(0, 0, 0, 0.1, 0.2, 1)], 1, 0)
