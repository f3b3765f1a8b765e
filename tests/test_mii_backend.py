"""DeepSpeed-MII backend: everything short of the library call, with a fake ``mii`` module."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from inference_eval.backends.base import BackendUnavailable, BackendUnsupported
from inference_eval.models.files import ModelFiles
from inference_eval.requests import Request, check_lengths

CONF = Path(__file__).resolve().parents[1] / "conf"


def job_cfg(hardware: str = "h100") -> dict:
    load = lambda group, member: OmegaConf.to_container(OmegaConf.load(CONF / group / f"{member}.yaml"))  # noqa: E731
    return {"library": load("library", "mii"), "model": load("model", "tiny-llama"),
            "hardware": load("hardware", hardware), "seed": 0}


@dataclass
class Response:  # the fields of mii.batching.data_classes.Response
    generated_text: str
    prompt_length: int
    generated_length: int
    finish_reason: str


class FakePipeline:
    """Records calls; answers like MII's pipeline (one Response per prompt, same order)."""

    def __init__(self, short_by: int = 0):
        self.calls: list[tuple[list[str], dict]] = []
        self.destroyed = False
        self.short_by = short_by

    def __call__(self, prompts, **kwargs):
        self.calls.append((list(prompts), kwargs))
        n = kwargs["max_new_tokens"] - self.short_by
        return [Response("x" * n, len(p.split()) + 1, n, "length") for p in prompts]

    def destroy(self):
        self.destroyed = True


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=False):
        assert skip_special_tokens
        return " ".join(f"t{i}" for i in ids if i != 1)


@pytest.fixture
def fake_mii(monkeypatch):
    state = {"pipeline_kwargs": None, "pipe": FakePipeline()}

    def pipeline(**kwargs):
        state["pipeline_kwargs"] = kwargs
        return state["pipe"]

    monkeypatch.setitem(sys.modules, "mii", types.SimpleNamespace(pipeline=pipeline))
    from inference_eval.backends.mii_backend import MiiBackend

    monkeypatch.setattr(MiiBackend, "load_tokenizer", staticmethod(lambda path: FakeTokenizer()))
    return state


REQUESTS = [Request("a", (1, 10, 11), 4), Request("b", (1, 12), 2, prompt="hello there"),
            Request("c", (1, 13, 14, 15), 4)]


def test_pipeline_arguments_and_exact_lengths(fake_mii):
    from inference_eval.backends.mii_backend import MiiBackend

    MiiBackend.check_available()
    b = MiiBackend(job_cfg(), ModelFiles(hf_dir="/m/hf", weights_dir="/m/weights"))
    b.load()
    assert fake_mii["pipeline_kwargs"] == {"model_name_or_path": "/m/weights", "tensor_parallel": 1}
    completions = b.generate(REQUESTS)
    pipe = fake_mii["pipe"]
    # one call per distinct max_tokens, each with ignore_eos and greedy decoding
    assert [(prompts, kw["max_new_tokens"]) for prompts, kw in pipe.calls] == [
        (["hello there"], 2), (["t10 t11", "t13 t14 t15"], 4)]
    assert all(kw["ignore_eos"] is True and kw["do_sample"] is False and kw["min_new_tokens"] == kw["max_new_tokens"]
               for _, kw in pipe.calls)
    assert [c.id for c in completions] == ["a", "b", "c"]
    assert [c.output_tokens for c in completions] == [4, 2, 4]
    assert all(c.output_token_ids == [] for c in completions)  # MII returns counts, not ids
    assert check_lengths(REQUESTS, completions).valid
    # "hello there" re-tokenized by the fake engine is 3 tokens, not the dataset's 2: counted, and the
    # engine's own prompt length is what the completion reports
    assert b.stats["calls"] == 2 and b.stats["prompt_length_mismatches"] == 1
    assert [c.prompt_tokens for c in completions] == [3, 3, 4]
    assert b.stats["submission"].startswith("grouped by max_tokens")
    b.close()
    assert pipe.destroyed


def test_short_outputs_are_caught_by_the_length_check(fake_mii):
    from inference_eval.backends.mii_backend import MiiBackend

    fake_mii["pipe"] = FakePipeline(short_by=1)
    b = MiiBackend(job_cfg(), ModelFiles(weights_dir="/m/weights"))
    b.load()
    check = check_lengths(REQUESTS, b.generate(REQUESTS))
    assert not check.valid and "a: got 3 want 4" in check.reason()


def test_max_length_and_checkpoint_override(fake_mii):
    from inference_eval.backends.mii_backend import MiiBackend

    cfg = job_cfg()
    cfg["library"].update(max_length=8192, tensor_parallel=2)
    cfg["model"]["checkpoint"] = "/real/llama"
    assert MiiBackend(cfg, ModelFiles(weights_dir="/m/weights")).pipeline_kwargs() == {
        "model_name_or_path": "/real/llama", "tensor_parallel": 2, "max_length": 8192}


def test_unavailable_reasons(monkeypatch):
    from inference_eval.backends.mii_backend import MiiBackend

    monkeypatch.setitem(sys.modules, "mii", None)
    with pytest.raises(BackendUnavailable, match=r"deepspeed-mii is not installed: it needs CUDA kernels \(deepspeed-kernels\), no CPU build"):
        MiiBackend.check_available()
    with pytest.raises(BackendUnsupported, match="only on NVIDIA GPUs; hardware 'cpu' is cpu"):
        MiiBackend(job_cfg("cpu"), ModelFiles(weights_dir="/w")).pipeline_kwargs()
    with pytest.raises(BackendUnavailable, match="model_weights"):
        MiiBackend(job_cfg(), ModelFiles()).pipeline_kwargs()


class FakeRaggedPipeline:
    """MII 0.3.x's MIIPipeline.__call__: one _put_request(uid, text, kwargs) per prompt, then responses."""

    tid = 7

    def __init__(self):
        import queue

        self.request_queue = queue.Queue()
        self.result_queues = {}
        self.calls = 0

    def make_request(self, tid, uid, input_tokens, kwargs):
        return (uid, [int(t) for t in input_tokens], dict(kwargs))

    def _put_request(self, uid, text, kwargs):  # the class's own: tokenizes text (never used here)
        raise AssertionError("the text path must not run when ids can be submitted")

    def __call__(self, prompts, **generate_kwargs):
        self.calls += 1
        for uid, text in enumerate(prompts):
            self._put_request(uid, text, generate_kwargs.copy())
        out = {}
        while not self.request_queue.empty():
            uid, ids, kw = self.request_queue.get()
            out[uid] = Response("x", len(ids), kw["max_new_tokens"], "length")
        return [out[uid] for uid in range(len(prompts))]

    def destroy(self):
        pass


def test_one_call_with_token_ids_and_per_request_lengths(fake_mii):
    from inference_eval.backends.mii_backend import MiiBackend

    pipe = fake_mii["pipe"] = FakeRaggedPipeline()
    b = MiiBackend(job_cfg(), ModelFiles(weights_dir="/m/weights"))
    b.load()
    completions = b.generate(REQUESTS)
    assert pipe.calls == 1 and b.stats["submission"] == "one call, token ids, per-request lengths"
    assert [c.output_tokens for c in completions] == [4, 2, 4]
    assert [c.prompt_tokens for c in completions] == [3, 2, 4]  # the ids as given, no re-tokenizing
    assert b.stats["prompt_length_mismatches"] == 0 and check_lengths(REQUESTS, completions).valid
    assert "_put_request" not in vars(pipe)  # the hook is removed after the call
    b.close()


def test_synthetic_rows_are_sent_as_their_ids_decoded(fake_mii):
    from inference_eval.backends.mii_backend import MiiBackend
    from inference_eval.requests import SYNTHETIC_PROMPT

    b = MiiBackend(job_cfg(), ModelFiles(weights_dir="/m/weights"))
    b.load()
    r = Request("s", (1, 20, 21), 2, prompt=SYNTHETIC_PROMPT.format(n=3))
    assert r.text == "" and b.prompt_text(r) == "t20 t21"


@pytest.mark.parametrize("message, status", [
    # DeepSpeed 0.19.8's refusal of a linearly RoPE-scaled model (Vicuna-7B-16k), its words
    ("Inference V2 cannot serve rope_type='linear' (LlamaConfig). The rotary embedding is built from "
     "theta_base alone", "unsupported"),
    ("some other bad value", "failed"),
])
def test_deepspeed_refusing_a_model_configuration_is_unsupported(fake_mii, monkeypatch, message, status):
    from inference_eval.backends.mii_backend import MiiBackend
    from inference_eval.batch_worker import classify

    def pipeline(**kwargs):
        raise ValueError(message)

    monkeypatch.setattr(sys.modules["mii"], "pipeline", pipeline)  # the fake MII, refusing at build
    backend = MiiBackend(job_cfg(), ModelFiles(hf_dir="/m/hf", weights_dir="/m/weights"))
    with pytest.raises((BackendUnsupported, ValueError)) as raised:
        backend.load()
    assert classify(raised.value) == status
    assert message in str(raised.value)
