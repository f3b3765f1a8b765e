"""TensorRT-LLM backend: everything short of the library call, with a fake ``tensorrt_llm`` module."""

from __future__ import annotations

import dataclasses
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


# The fake mirrors the real signatures of the pinned release (docs/trtllm.md): SamplingParams is a
# keyword-only dataclass (an unknown field is a TypeError), KvCacheConfig and BuildConfig are strict
# pydantic models (an unknown field is an error), LLM's constructor takes model, tokenizer, ... dtype
# then LLM-API keyword arguments, and LLM.generate reads a flat list of ints as ONE prompt and then
# returns one RequestOutput instead of a list.

@dataclasses.dataclass(kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool = False
    detokenize: bool = True
    exclude_input_from_output: bool = True

    @property
    def kwargs(self) -> dict:
        """The fields set away from their defaults (what the backend asked for)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}


class _StrictConfig:
    """Like the real pydantic configs: only declared fields, anything else is rejected."""

    FIELDS: tuple[str, ...] = ()

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"{type(self).__name__}: extra fields not permitted: {sorted(unknown)}")
        self.kwargs = kwargs


class KvCacheConfig(_StrictConfig):
    FIELDS = ("enable_block_reuse", "max_tokens", "free_gpu_memory_fraction", "dtype")


class BuildConfig(_StrictConfig):
    FIELDS = ("max_batch_size", "max_num_tokens", "max_seq_len", "max_input_len", "max_beam_width")


LLM_API_KWARGS = {"build_config", "kv_cache_config", "workspace", "backend"}


def fake_trtllm(monkeypatch, drop_last_token: bool = False) -> dict:
    state: dict = {}

    class LLM:
        def __init__(self, model, tokenizer=None, tokenizer_mode="auto", skip_tokenizer_init=False,
                     trust_remote_code=False, tensor_parallel_size=1, dtype="auto", revision=None,
                     tokenizer_revision=None, **kwargs):
            unknown = set(kwargs) - LLM_API_KWARGS
            if unknown:
                raise TypeError(f"LLM got unexpected arguments {sorted(unknown)}")
            state["init"] = {"model": model, **({"tokenizer": tokenizer} if tokenizer is not None else {}),
                             **({"dtype": dtype} if dtype != "auto" else {}), **kwargs}
            state["shutdown"] = False

        def generate(self, inputs, sampling_params=None, use_tqdm=True, lora_request=None):
            state["generate"] = (inputs, sampling_params, use_tqdm)
            unbatched = not isinstance(inputs, list) or isinstance(inputs[0], int)
            prompts = [inputs] if unbatched else inputs
            params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
            outs = []
            for ids, sp in zip(prompts, params):
                n = sp.max_tokens - (1 if drop_last_token else 0)
                seq = types.SimpleNamespace(token_ids=[(ids[-1] + k) % 32000 for k in range(n)])
                outs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[seq]))
            return outs[0] if unbatched else outs

        def shutdown(self):
            state["shutdown"] = True

    root = types.ModuleType("tensorrt_llm")
    root.__version__ = "1.2.0rc2-fake"
    root.LLM, root.SamplingParams, root.BuildConfig = object, SamplingParams, BuildConfig  # LLM: PyTorch flavour
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llmapi.KvCacheConfig, llmapi.BuildConfig, llmapi.SamplingParams = KvCacheConfig, BuildConfig, SamplingParams
    engine_mod = types.ModuleType("tensorrt_llm._tensorrt_engine")
    engine_mod.LLM = LLM  # the TensorRT-engine flavour must be the one used
    monkeypatch.setitem(sys.modules, "tensorrt_llm", root)
    monkeypatch.setitem(sys.modules, "tensorrt_llm.llmapi", llmapi)
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
    init = dict(state["init"])
    assert init.pop("kv_cache_config").kwargs == {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.9}
    assert init == {"model": str(tmp_path / "engine"), "tokenizer": "/m/hf"}
    completions = b.generate(REQUESTS)
    inputs, params, use_tqdm = state["generate"]
    assert inputs == [list(r.prompt_token_ids) for r in REQUESTS] and use_tqdm is False
    assert [p.kwargs for p in params] == [
        {"max_tokens": n, "ignore_eos": True, "top_k": 1, "detokenize": False} for n in (1, 5, 17)]
    assert [len(c.output_token_ids) for c in completions] == [1, 5, 17]
    assert completions[1].output_token_ids == [12, 13, 14, 15, 16]
    assert check_lengths(REQUESTS, completions).valid
    assert b.stats["build_config"] == {"max_batch_size": 256} and b.versions() == {"tensorrt_llm": "1.2.0rc2-fake"}
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
    files = ModelFiles(hf_dir="/m/hf", engine_record=str(engine_record(tmp_path)))
    b = TrtLlmBackend(job_cfg(), files)
    b.load()
    assert state["init"]["kv_cache_config"].kwargs == {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.9}
    assert b.resolved_settings() == {"prefix_caching": False}
    cfg = job_cfg()
    cfg["library"]["prefix_caching"] = True
    b = TrtLlmBackend(cfg, files)
    b.load()
    assert state["init"]["kv_cache_config"].kwargs == {"enable_block_reuse": True, "free_gpu_memory_fraction": 0.9}


def test_one_request_is_still_a_batch_and_none_is_no_call(tmp_path, monkeypatch):
    """LLM.generate reads a flat list of ints as one prompt (and answers with one RequestOutput): a single
    request must still go as a list of one token-id list, and no request must not reach generate."""
    from inference_eval.backends.trtllm_backend import TrtLlmBackend

    state = fake_trtllm(monkeypatch)
    b = TrtLlmBackend(job_cfg(), ModelFiles(hf_dir="/m/hf", engine_record=str(engine_record(tmp_path))))
    b.load()
    (only,) = b.generate(REQUESTS[1:2])
    assert state["generate"][0] == [[1, 12]] and only.output_token_ids == [12, 13, 14, 15, 16]
    state.pop("generate")
    assert b.generate([]) == [] and "generate" not in state
    b._llm.generate = lambda *a, **k: types.SimpleNamespace(outputs=[])  # what a flat prompt list gets back
    with pytest.raises(RuntimeError, match="returned one SimpleNamespace outputs for 3 prompts"):
        b.generate(REQUESTS)


def test_sampling_params_are_real_fields(monkeypatch):
    """Every keyword the backend passes exists on the pinned SamplingParams (a kw-only dataclass)."""
    from inference_eval.backends.trtllm_backend import TrtLlmBackend

    fake_trtllm(monkeypatch)
    b = TrtLlmBackend(job_cfg(), ModelFiles())
    b._sampling_params_cls = SamplingParams
    (p,) = b.sampling_params(REQUESTS[:1])
    assert (p.max_tokens, p.ignore_eos, p.top_k, p.detokenize) == (1, True, 1, False)
    with pytest.raises(TypeError):
        SamplingParams(max_new_tokens=3)  # the fake rejects what the real one rejects


def test_free_gpu_memory_fraction_is_checked(tmp_path, monkeypatch):
    from inference_eval.backends.trtllm_backend import TrtLlmBackend

    state = fake_trtllm(monkeypatch)
    cfg = job_cfg()
    cfg["library"]["free_gpu_memory_fraction"] = 0.5
    files = ModelFiles(hf_dir="/m/hf", engine_record=str(engine_record(tmp_path)))
    b = TrtLlmBackend(cfg, files)
    b.load()
    assert state["init"]["kv_cache_config"].kwargs["free_gpu_memory_fraction"] == 0.5
    assert b.stats["free_gpu_memory_fraction"] == 0.5
    cfg["library"]["free_gpu_memory_fraction"] = 1.5
    with pytest.raises(ValueError, match=r"library.free_gpu_memory_fraction must be a number in \(0, 1\], got 1.5"):
        TrtLlmBackend(cfg, files).load()


def test_build_config_comes_from_the_llm_api(monkeypatch):
    from inference_eval.models.trtllm_engine import import_trtllm

    fake_trtllm(monkeypatch)
    LLM, build_config, sampling_params, version = import_trtllm()
    assert build_config is BuildConfig and sampling_params is SamplingParams and version == "1.2.0rc2-fake"
    assert LLM is sys.modules["tensorrt_llm._tensorrt_engine"].LLM


# -- trtllm-serve (inference_eval.serving.servers.TrtLlmServer) ----------------------------------------
# What the pinned release's source declares (docs/trtllm.md): the serve command's options and the
# OpenAI completion request's fields (its request model forbids any other field).
SERVE_OPTIONS = {"--tokenizer", "--host", "--port", "--backend", "--max_batch_size", "--max_num_tokens",
                 "--max_seq_len", "--free_gpu_memory_fraction", "--extra_llm_api_options", "--config",
                 "--log_level", "--max_beam_width", "--tp_size", "--trust_remote_code"}
SERVE_BACKENDS = {"pytorch", "tensorrt", "trt", "_autodeploy"}
COMPLETION_REQUEST_FIELDS = {"model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
                             "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
                             "suffix", "temperature", "top_p", "user", "use_beam_search", "top_k", "min_p",
                             "repetition_penalty", "stop_token_ids", "ignore_eos", "min_tokens", "detokenize",
                             "skip_special_tokens", "add_special_tokens", "response_format"}
STREAM_OPTIONS_FIELDS = {"include_usage", "continuous_usage_stats"}


def _serve_argv(tmp_path, **lib):
    from inference_eval.config import compose
    from inference_eval.serving.servers import TrtLlmServer

    cfg = compose(["library=trtllm", "scenario=serving"])
    cfg["library"].update(lib)
    return TrtLlmServer().command(cfg, ModelFiles(hf_dir="/m/hf", engine_record=str(engine_record(tmp_path))),
                                  "127.0.0.1", 8123, None).argv


def test_serve_flags_exist_in_the_cli(tmp_path):
    argv = _serve_argv(tmp_path)
    assert argv[1] == str(tmp_path / "engine")  # the engine folder is the positional MODEL
    flags = [a for a in argv[2:] if a.startswith("--")]
    assert set(flags) <= SERVE_OPTIONS, set(flags) - SERVE_OPTIONS
    assert argv[argv.index("--backend") + 1] in SERVE_BACKENDS
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--tokenizer") + 1] == "/m/hf"


def test_serve_options_file_carries_the_whole_kv_cache_config(tmp_path):
    """trtllm-serve replaces its kv_cache_config with the file's wholesale, so the file must also hold the
    KV-cache memory share; files with different settings never share a name."""
    import yaml

    argv = _serve_argv(tmp_path)
    path = Path(argv[argv.index("--extra_llm_api_options") + 1])
    assert yaml.safe_load(path.read_text()) == {"kv_cache_config": {"enable_block_reuse": False,
                                                                    "free_gpu_memory_fraction": 0.9}}
    assert KvCacheConfig(**yaml.safe_load(path.read_text())["kv_cache_config"]).kwargs  # only real fields
    other = _serve_argv(tmp_path, free_gpu_memory_fraction=0.5, prefix_caching=True)
    other_path = Path(other[other.index("--extra_llm_api_options") + 1])
    assert other_path != path
    assert yaml.safe_load(other_path.read_text())["kv_cache_config"] == {"enable_block_reuse": True,
                                                                         "free_gpu_memory_fraction": 0.5}


def test_serve_request_uses_only_completion_request_fields():
    from inference_eval.serving.servers import TrtLlmServer

    body = TrtLlmServer().body(Request("r", (5, 6), 16), "m")
    assert set(body) <= COMPLETION_REQUEST_FIELDS, set(body) - COMPLETION_REQUEST_FIELDS
    assert set(body["stream_options"]) <= STREAM_OPTIONS_FIELDS
    assert body["prompt"] == [5, 6] and body["max_tokens"] == body["min_tokens"] == 16 and body["ignore_eos"] is True
