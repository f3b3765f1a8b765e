"""The client certificate: each serving row says whether the load generator, not the server, may have set
its pace (its CPU, its send lag, its achieved rate), and the figure marks such rows."""
import math

import pandas as pd
import pytest

from serving_fixtures import loopback_sweep, write_rows
from inference_eval.serving.metrics import CLIENT_CPU_LIMIT, client_certificate

CALM = {"requested_rate": 10.0, "send_lag_p99_s": 0.001, "achieved_rate": 9.9, "scheduled_rate": 10.0}


def test_a_calm_rate_is_not_client_limited():
    cert = client_certificate(CALM, cpu_s=0.5, wall_s=5.0)
    assert cert == {"client_cpu_share": 0.1, "client_limited": False, "client_limited_reason": ""}


@pytest.mark.parametrize("change,cpu_s,needle", [
    ({}, 4.9, "client CPU 0.98 of a core"),
    ({"send_lag_p99_s": 0.08}, 0.5, "send lag p99 80.0 ms (limit 50.0 ms)"),   # half the 100 ms mean gap
    ({"achieved_rate": 8.0}, 0.5, "achieved 8.0 req/s of the schedule's 10.0"),
])
def test_each_sign_of_a_saturated_client_is_named(change, cpu_s, needle):
    cert = client_certificate({**CALM, **change}, cpu_s=cpu_s, wall_s=5.0)
    assert cert["client_limited"] is True and needle in cert["client_limited_reason"]


def test_rate_inf_is_judged_on_cpu_alone():
    row = {"requested_rate": math.inf, "send_lag_p99_s": 0.5, "achieved_rate": 1e4, "scheduled_rate": math.nan}
    assert client_certificate(row, cpu_s=0.1, wall_s=1.0)["client_limited"] is False
    assert client_certificate(row, cpu_s=CLIENT_CPU_LIMIT, wall_s=1.0)["client_limited"] is True


def test_sweep_rows_carry_the_certificate(tmp_path, monkeypatch):
    rows = write_rows(tmp_path / "rows.jsonl", 4, max_tokens=6)
    loopback_sweep(["scenario.rates=[10.0]", "scenario.num_requests=12", "scenario.drop_first=1",
                    "scenario.drop_last=1"], rows, tmp_path, monkeypatch)
    row = pd.read_csv(tmp_path / "out.csv").iloc[0]
    assert 0 < row["client_cpu_share"] < CLIENT_CPU_LIMIT  # 10 req/s of 6 tokens: the client idles
    assert row["client_limited"] == False and pd.isna(row["client_limited_reason"])  # noqa: E712


def test_serving_figure_rings_client_limited_rates(tmp_path):
    from inference_eval.serving.figures import serving_figure

    base = {"library": "vllm", "model": "m", "dataset": "s2s", "status": "ok", "p99_reliable": True,
            "sequence_throughput_req_s": 1.0, "mean_latency_per_output_token_s": 0.01, "ttft_s_p50": 0.02,
            "ttft_s_p99": 0.03, "tpot_s_mean": 0.01, "tpot_s_p50": 0.01, "e2e_s_p99": 0.5}
    frame = pd.DataFrame([{**base, "rate": r, "token_throughput_tok_s": t, "client_limited": lim}
                          for r, t, lim in ((2.0, 100, "False"), (8.0, 400, "True"))])
    serving_figure(frame, tmp_path / "fig.png", title="client")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
