"""The rate sweep, its CSV/record/figure and the loadgen CLI, against the loopback streaming server."""
import json
from pathlib import Path

import pandas as pd
import pytest

from inference_eval.config import compose
from inference_eval.models.files import ModelFiles
from inference_eval.requests import Request
from inference_eval.serving.launch import TAG_ENV, start_server
from inference_eval.serving.procaudit import ProcessAudit
from inference_eval.serving.servers import LoopbackServer, MiiServer, TrtLlmServer
from inference_eval.serving.sweep import COLUMNS, ServingConfigError, ServingSettings, build_requests, run_sweep


@pytest.fixture(autouse=True)
def no_survivors(monkeypatch):
    audit = ProcessAudit()
    monkeypatch.setenv(TAG_ENV, audit.tag)
    yield audit
    assert not audit.survivors(), "a server process survived"


def _rows(path: Path, n=6) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "prompt": "", "prompt_token_ids": [1, 5 + i], "max_tokens": 8 + i}) + "\n")
    return path


def _cfg(*ov):
    return compose(["scenario=serving", "library=vllm", "model=tiny-llama", "hardware=cpu", *ov])


def test_settings_fall_back_to_hardware_scale():
    s = ServingSettings.from_cfg(_cfg())
    scale = _cfg()["hardware"]["scale"]
    assert s.rates == [float(r) for r in scale["serving_rates"]]
    assert s.num_requests == scale["serving_requests"]
    assert s.drop_first == s.drop_last == scale["drop_warmup"]
    assert s.host == "127.0.0.1" and s.arrival == "poisson"
    s2 = ServingSettings.from_cfg(_cfg("scenario.rates=[3]", "scenario.num_requests=10", "scenario.drop_first=0"))
    assert (s2.rates, s2.num_requests, s2.drop_first) == ([3.0], 10, 0)
    with pytest.raises(ServingConfigError, match="drop_first"):
        ServingSettings.from_cfg(_cfg("scenario.num_requests=3", "scenario.drop_first=2", "scenario.drop_last=2"))


def test_a_schedule_below_the_hardware_scale_says_so():
    full = _cfg()
    assert ServingSettings.from_cfg(full).reduced_scale_note(full) is None  # the profile's own scale
    small = _cfg("scenario.num_requests=10", "scenario.drop_first=1", "scenario.drop_last=1")
    note = ServingSettings.from_cfg(small).reduced_scale_note(small)
    scale = small["hardware"]["scale"]
    assert note.startswith("reduced scale: 10 requests per rate (first 1 and last 1 dropped)")
    assert f"profile's {scale['serving_requests']} (drop {scale['drop_warmup']} + {scale['drop_warmup']})" in note


def test_build_requests_cycles_rows_and_caps_length():
    rows = [Request(id="a", prompt_token_ids=(1,), max_tokens=100), Request(id="b", prompt_token_ids=(2,), max_tokens=5)]
    reqs = build_requests(rows, 5, max_tokens_cap=16)
    assert [r.id for r in reqs] == ["a", "b", "a#1", "b#1", "a#2"]
    assert [r.max_tokens for r in reqs] == [16, 5, 16, 5, 16]


def test_sweep_writes_rows_record_and_request_files(tmp_path):
    rows = _rows(tmp_path / "rows.jsonl")
    cfg = _cfg("scenario.rates=[20.0,40.0]", "scenario.num_requests=14", "scenario.drop_first=2", "scenario.drop_last=2")
    out = tmp_path / "serving" / "vllm_tiny-llama_s2s.csv"
    frame = run_sweep(cfg, rows, ModelFiles(), out, tmp_path / "run", spec=LoopbackServer(), dataset="s2s")
    disk = pd.read_csv(out)
    assert list(disk.columns) == list(COLUMNS)
    assert disk["rate"].tolist() == [20.0, 40.0] and set(disk["status"]) == {"ok"}
    assert (disk["n_ok"] == 10).all() and (disk["n_failed_total"] == 0).all()
    assert disk[["library", "model", "dataset", "hardware"]].iloc[0].tolist() == ["vllm", "tiny-llama", "s2s", "cpu"]
    # 14 requests a rate is below the CPU profile's serving_requests: every row says so
    assert disk["scale_note"].str.startswith("reduced scale: 14 requests per rate").all()
    # every request came back with exactly its tokens, counted from the stream's ids
    reqs = pd.read_csv(tmp_path / "run" / "requests_rate20.csv")
    assert len(reqs) == 14 and reqs["ok"].all()
    assert (reqs["output_tokens"] == reqs["requested_tokens"]).all()
    assert (reqs["sent_s"] >= reqs["scheduled_s"]).all() and (reqs["end_s"] >= reqs["first_token_s"]).all()
    assert reqs["token_times_s"].str.split().map(len).tolist() == reqs["output_tokens"].tolist()
    assert (disk["achieved_over_requested"].between(0.5, 2.0)).all()
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["kind"] == "serving" and record["status"] == "ok"
    assert record["provenance"]["config_hash"] and record["settings"]["rates"] == [20.0, 40.0]
    assert "loopback_server" in " ".join(record["server_command"])
    # every key a rate's row got is a ServingRow field (a column), none an extra the CSV would drop
    assert [list(r) for r in record["rates"]] == [list(COLUMNS)] * 2
    assert frame.shape[0] == 2

    from inference_eval.serving.figures import load_sweeps, serving_figure
    missing = tmp_path / "mii.csv"
    run_sweep(compose(["scenario=serving", "library=mii", "model=tiny-llama", "hardware=cpu"]), rows, ModelFiles(),
              missing, tmp_path / "run-mii", dataset="s2s")
    fig = tmp_path / "figures" / "serving_s2s.png"
    serving_figure(load_sweeps([out, missing]), fig)
    assert fig.stat().st_size > 10_000


def test_min_rate_duration_lengthens_the_schedule_at_high_rates():
    base = ("scenario.num_requests=40", "scenario.drop_first=5", "scenario.drop_last=5")
    plain = ServingSettings.from_cfg(_cfg(*base))
    assert [plain.requests_at(r) for r in (1.0, 500.0, float("inf"))] == [40, 40, 40] and plain.most_requests() == 40
    s = ServingSettings.from_cfg(_cfg(*base, "scenario.min_rate_duration_s=2", "scenario.max_requests=100"))
    assert [s.requests_at(r) for r in (1.0, 30.0, 30.2, 100.0, float("inf"))] == [40, 60, 61, 100, 100]
    assert s.most_requests() == 100
    default_cap = ServingSettings.from_cfg(_cfg(*base, "scenario.min_rate_duration_s=10"))
    assert default_cap.requests_at(float("inf")) == 320  # 8 x num_requests
    with pytest.raises(ServingConfigError, match="max_requests"):
        ServingSettings.from_cfg(_cfg(*base, "scenario.min_rate_duration_s=2", "scenario.max_requests=20"))
    cfg = _cfg(*base, "scenario.min_rate_duration_s=2")
    cfg["scenario"]["min_rate_duration_s"] = 0  # the schema refuses it at compose; from_cfg names it too
    with pytest.raises(ServingConfigError, match="min_rate_duration_s"):
        ServingSettings.from_cfg(cfg)


def test_sweep_sends_each_rate_its_own_count_over_the_same_rows(tmp_path):
    rows = _rows(tmp_path / "rows.jsonl")
    cfg = _cfg("scenario.rates=[10.0,40.0]", "scenario.num_requests=14", "scenario.drop_first=2",
               "scenario.drop_last=2", "scenario.min_rate_duration_s=1", "scenario.max_requests=30")
    out = tmp_path / "serving" / "vllm_tiny-llama_s2s.csv"
    run_sweep(cfg, rows, ModelFiles(), out, tmp_path / "run", spec=LoopbackServer(), dataset="s2s")
    disk = pd.read_csv(out)
    assert disk["rate"].tolist() == [10.0, 40.0] and set(disk["status"]) == {"ok"}
    assert disk["n_requests"].tolist() == [14, 30]  # 10/s x 1 s is below 14; 40/s x 1 s is capped at 30
    assert disk["n_ok"].tolist() == [10, 26]
    assert disk["requests_sha256"].nunique() == 1  # the same dataset rows, cycled further: the gate compares them
    # the note is per rate: 14 is below the CPU profile's 24 requests, 30 is not
    assert disk["scale_note"].tolist()[0].startswith("reduced scale: 14 requests per rate")
    assert pd.isna(disk["scale_note"].tolist()[1])
    assert len(pd.read_csv(tmp_path / "run" / "requests_rate40.csv")) == 30
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["fairness"]["min_rate_duration_s"] == 1.0 and record["fairness"]["max_requests"] == 30


@pytest.mark.parametrize("spec_cls,library", [(MiiServer, "mii"), (TrtLlmServer, "trtllm")])
def test_missing_library_is_one_row_with_reason(tmp_path, spec_cls, library):
    reason = spec_cls().unavailable_reason()
    if reason is None:
        pytest.skip(f"{library} is installed here")
    cfg = compose(["scenario=serving", f"library={library}", "model=tiny-llama", "hardware=cpu"])
    frame = run_sweep(cfg, _rows(tmp_path / "rows.jsonl"), ModelFiles(), tmp_path / "o.csv", tmp_path / "run",
                      dataset="s2s")
    assert len(frame) == 1 and frame.loc[0, "status"] == "not_installed"
    assert frame.loc[0, "reason"] == reason and "not installed" in reason
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == "not_installed"


def test_warm_up_into_a_stream_that_never_ends_fails_fast_with_the_server_log(tmp_path):
    import time

    cfg = _cfg("scenario.rates=[20.0]", "scenario.num_requests=6", "scenario.drop_first=0", "scenario.drop_last=0",
               "scenario.warmup_timeout_s=2")
    t0 = time.perf_counter()
    frame = run_sweep(cfg, _rows(tmp_path / "rows.jsonl"), ModelFiles(), tmp_path / "o.csv", tmp_path / "run",
                      spec=LoopbackServer(("--stall-stream-every", "1")), dataset="s2s")
    assert time.perf_counter() - t0 < 60  # not scenario.request_timeout_s (600 s)
    assert frame["status"].tolist() == ["failed"]
    reason = frame.loc[0, "reason"]
    assert "warm-up request failed" in reason and "stalls inside its stream" in reason


def test_loadgen_cli_against_running_server(tmp_path):
    from inference_eval.cli import main

    spec = LoopbackServer()
    with start_server(lambda p: spec.command({}, None, "127.0.0.1", p, None), tmp_path / "s.log") as srv:
        rc = main(["loadgen", "--url", srv.base_url, "--rows", str(_rows(tmp_path / "rows.jsonl")), "--rate", "30",
                   "--rate", "60", "--num-requests", "20", "--dialect", "loopback", "--out", str(tmp_path / "m.csv")])
    assert rc == 0
    m = pd.read_csv(tmp_path / "m.csv")
    assert m["requested_rate"].tolist() == [30.0, 60.0] and (m["n_ok"] == 20).all()


def test_mii_request_forces_length_through_finish_reason():
    from inference_eval.requests import Request
    from inference_eval.serving.servers import MiiServer

    server = MiiServer()
    body = server.body(Request("r", (5, 6), 16), "model", "some text")
    assert body["max_tokens"] == 16 and body["min_tokens"] > 16  # min vs prompt+generated in MII
    assert server.length_from_finish_reason and server.prompt_as_text
    # MII's server samples always and rejects temperature 0 (its config wants > 0)
    assert body["temperature"] is None and body["top_p"] == 1.0


def test_llamacpp_request_masks_eos_until_max_tokens():
    from inference_eval.requests import Request
    from inference_eval.serving.servers import LlamaCppServer

    body = LlamaCppServer().body(Request("r", (5, 6), 16), "model", "some text")
    # llama-cpp-python counts min_tokens over generated tokens only: min = max forces the length
    assert body["max_tokens"] == 16 and body["min_tokens"] == 16 and body["prompt"] == "some text"


def test_trtllm_serve_is_launched_from_where_it_was_found(tmp_path, monkeypatch):
    import sys as _sys

    from inference_eval.config import compose
    from inference_eval.models.files import ModelFiles

    exe = tmp_path / "bin" / "python"
    exe.parent.mkdir()
    (exe.parent / "trtllm-serve").write_text("#!/bin/sh\n")
    monkeypatch.setattr(_sys, "executable", str(exe))
    cfg = compose(["library=trtllm", "scenario=serving"])
    spec = TrtLlmServer()
    assert spec.unavailable_reason() is None
    argv = spec.command(cfg, ModelFiles(hf_dir="/m/hf"), "127.0.0.1", 8000, None).argv
    assert argv[0] == str(exe.parent / "trtllm-serve")
    options = Path(argv[argv.index("--extra_llm_api_options") + 1])  # KV-block reuse off: the fair default
    assert options.read_text() == "kv_cache_config:\n  enable_block_reuse: false\n  free_gpu_memory_fraction: 0.9\n"
