"""TensorRT-LLM backend: everything short of the library call, with a fake ``tensorrt_llm`` module."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from inference_eval.backends.base import BackendUnavailable, BackendUnsupported
from inference_eval.models.files import ModelFiles
from inference_eval.requests import Request, check_lengths

CONF = Path(__file__).resolve().parents[1] / "conf"
REQUESTS = [Request("a", (1, 10, 11), 1), Request("b", (1, 12), 5), Request("c", tuple(range(1, 30)), 17)]


def job_cfg() -> dict:
    load = lambda group, member: OmegaConf.to_container(OmegaConf.load(CONF / group / f"{member}.yaml"))  # noqa: E731
    return {"library": load("library", "trtllm"), "model": load("model", "tiny-llama"),
            "hardware": load("hardware", "h100"), "seed": 0}


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


def fake_trtllm(monkeypatch, drop_last_token: bool = False) -> dict:
    state: dict = {}

    class LLM:
        def __init__(self, **kwargs):
            state["init"] = kwargs
            state["shutdown"] = False

        def generate(self, inputs, sampling_params=None, use_tqdm=True):
            state["generate"] = (inputs, sampling_params, use_tqdm)
            outs = []
            for ids, sp in zip(inputs, sampling_params):
                n = sp.kwargs["max_tokens"] - (1 if drop_last_token else 0)
                seq = types.SimpleNamespace(token_ids=[(ids[-1] + k) % 32000 for k in range(n)])
                outs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[seq]))
            return outs

        def shutdown(self):
            state["shutdown"] = True

    root = types.ModuleType("tensorrt_llm")
    root.__version__ = "1.0-fake"
    root.LLM, root.SamplingParams, root.BuildConfig = object, SamplingParams, object
    engine_mod = types.ModuleType("tensorrt_llm._tensorrt_engine")
    engine_mod.LLM = LLM  # the TensorRT-engine flavour must be the one used
    monkeypatch.setitem(sys.modules, "tensorrt_llm", root)
    monkeypatch.setitem(sys.modules, "tensorrt_llm._tensorrt_engine", engine_mod)
    return state


def engine_record(tmp_path: Path, **fields) -> Path:
    engine = tmp_path / "engine"
    engine.mkdir(exist_ok=True)
    record = {"status": "ok", "reason": "", "engine_dir": str(engine), "build_config": {"max_batch_size": 256}}
    record.update(fields)
    (tmp_path / "engine.json").write_text(json.dumps(record))
    return tmp_path / "engine.json"


def test_token_id_prompts_and_sampling_params(tmp_path, monkeypatch):
    from inference_eval.backends.trtllm_backend import TrtLlmBackend

    state = fake_trtllm(monkeypatch)
    TrtLlmBackend.check_available()
    b = TrtLlmBackend(job_cfg(), ModelFiles(hf_dir="/m/hf", engine_record=str(engine_record(tmp_path))))
    b.load()
    assert state["init"] == {"model": str(tmp_path / "engine"), "tokenizer": "/m/hf"}
    completions = b.generate(REQUESTS)
    inputs, params, use_tqdm = state["generate"]
    assert inputs == [list(r.prompt_token_ids) for r in REQUESTS] and use_tqdm is False
    assert [p.kwargs for p in params] == [
        {"max_tokens": n, "ignore_eos": True, "top_k": 1, "detokenize": False} for n in (1, 5, 17)]
    assert [len(c.output_token_ids) for c in completions] == [1, 5, 17]
    assert completions[1].output_token_ids == [12, 13, 14, 15, 16]
    assert check_lengths(REQUESTS, completions).valid
    assert b.stats["build_config"] == {"max_batch_size": 256} and b.versions() == {"tensorrt_llm": "1.0-fake"}
    b.close()
    assert state["shutdown"] is True


def test_short_output_fails_length_check(tmp_path, monkeypatch):
    from inference_eval.backends.trtllm_backend import TrtLlmBackend

    fake_trtllm(monkeypatch, drop_last_token=True)
    b = TrtLlmBackend(job_cfg(), ModelFiles(hf_dir="/m/hf", engine_record=str(engine_record(tmp_path))))
    b.load()
    check = check_lengths(REQUESTS, b.generate(REQUESTS))
    assert check.n_exact == 0 and "c: got 16 want 17" in check.reason()


def test_engine_record_status_becomes_the_reason(tmp_path, monkeypatch):
    from inference_eval.backends.trtllm_backend import TrtLlmBackend

    fake_trtllm(monkeypatch)
    rec = engine_record(tmp_path, status="failed", reason="OOM while building", engine_dir=None)
    with pytest.raises(BackendUnsupported, match="no TensorRT-LLM engine \\(failed\\): OOM while building"):
        TrtLlmBackend(job_cfg(), ModelFiles(engine_record=str(rec))).load()
    rec = engine_record(tmp_path, status="not_installed", reason="tensorrt_llm not installed: x", engine_dir=None)
    with pytest.raises(BackendUnavailable, match="tensorrt_llm not installed: x"):
        TrtLlmBackend(job_cfg(), ModelFiles(engine_record=str(tmp_path))).load()  # the folder also finds engine.json


def test_not_installed_reason(monkeypatch):
    from inference_eval.backends.trtllm_backend import TrtLlmBackend

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(BackendUnavailable, match="tensorrt_llm not installed: its wheels are not on PyPI"):
        TrtLlmBackend.check_available()
    assert TrtLlmBackend(job_cfg(), ModelFiles()).versions() == {}


def test_kv_block_reuse_follows_prefix_caching(tmp_path, monkeypatch):
    """TensorRT-LLM reuses KV blocks across requests by default; the backend turns that off (the fair
    default) through KvCacheConfig, and the manifest's resolved settings say so."""
    from inference_eval.backends.trtllm_backend import TrtLlmBackend

    state = fake_trtllm(monkeypatch)
    llmapi = types.ModuleType("tensorrt_llm.llmapi")

    class KvCacheConfig:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    llmapi.KvCacheConfig = KvCacheConfig
    monkeypatch.setitem(sys.modules, "tensorrt_llm.llmapi", llmapi)
    files = ModelFiles(hf_dir="/m/hf", engine_record=str(engine_record(tmp_path)))
    b = TrtLlmBackend(job_cfg(), files)
    b.load()
    assert state["init"]["kv_cache_config"].kwargs == {"enable_block_reuse": False}
    assert b.resolved_settings() == {"prefix_caching": False}
    cfg = job_cfg()
    cfg["library"]["prefix_caching"] = True
    b = TrtLlmBackend(cfg, files)
    b.load()
    assert state["init"]["kv_cache_config"].kwargs == {"enable_block_reuse": True}
