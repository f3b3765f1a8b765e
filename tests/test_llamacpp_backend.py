"""llama.cpp backend: a random-weight GGUF of tiny-llama generates exactly the requested lengths."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from inference_eval.backends.base import BackendUnavailable, BackendUnsupported
from inference_eval.models.files import ModelFiles
from inference_eval.requests import Request, check_lengths

CONF = Path(__file__).resolve().parents[1] / "conf"


def job_cfg(**library_changes) -> dict:
    load = lambda group, member: OmegaConf.to_container(OmegaConf.load(CONF / group / f"{member}.yaml"))  # noqa: E731
    library = {**load("library", "llamacpp"), **library_changes}
    return {"library": library, "model": load("model", "tiny-llama"), "hardware": load("hardware", "cpu"), "seed": 0}


MIXED = [Request("a", (1, 15043, 3186), 1), Request("b", (1, 450, 4996, 17354, 1701, 29916), 5),
         Request("c", tuple(range(100, 140)), 17)]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf")
    from inference_eval.datasets.tokenizer import llama2_vocab_gguf
    from inference_eval.models.gguf_writer import write_random_gguf
    from inference_eval.models.spec import ModelSpec

    spec = ModelSpec.from_config(job_cfg()["model"])
    return write_random_gguf(spec, tmp_path_factory.mktemp("gguf") / "f16.gguf", "f16", 0, llama2_vocab_gguf())


@pytest.fixture(scope="module")
def backend(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from inference_eval.backends.llamacpp_backend import LlamaCppBackend

    LlamaCppBackend.check_available()
    b = LlamaCppBackend(job_cfg(n_ctx=256, n_threads=1), ModelFiles(gguf_path=str(tiny_gguf)))
    b.load()
    yield b
    b.close()


def test_mixed_lengths_are_exact(backend):
    completions = backend.generate(MIXED)
    assert [len(c.output_token_ids) for c in completions] == [1, 5, 17]
    assert [c.id for c in completions] == ["a", "b", "c"]
    assert all(0 <= t < 32000 for c in completions for t in c.output_token_ids)
    assert [c.prompt_tokens for c in completions] == [3, 6, 40]
    check = check_lengths(MIXED, completions)
    assert check.valid, check.reason()
    assert backend.stats["n_ctx"] == 256 and backend.stats["n_gpu_layers"] == 0


def test_requests_do_not_share_state(backend):
    """Greedy output of a request does not depend on the request processed before it."""
    alone = backend.generate([MIXED[1]])[0].output_token_ids
    after = backend.generate([MIXED[2], MIXED[1]])[1].output_token_ids
    assert alone == after


def test_context_overflow_is_a_per_request_error(backend):
    big = Request("big", tuple(range(100, 300)), 100)  # 300 > n_ctx 256
    completions = backend.generate([MIXED[0], big])
    assert len(completions[0].output_token_ids) == 1
    assert "n_ctx=256" in completions[1].error and not completions[1].output_token_ids
    assert not check_lengths([MIXED[0], big], completions).valid
    with pytest.raises(BackendUnsupported, match="every request exceeds n_ctx=256"):
        backend.generate([big])


def test_gpu_layers_only_on_gpu_hardware(tiny_gguf):
    from inference_eval.backends.llamacpp_backend import LlamaCppBackend

    cfg = job_cfg(n_gpu_layers=-1)
    assert LlamaCppBackend(cfg, ModelFiles(gguf_path=str(tiny_gguf))).llama_kwargs()["n_gpu_layers"] == 0
    cfg["hardware"] = {"name": "h100", "kind": "gpu"}
    kwargs = LlamaCppBackend(cfg, ModelFiles(gguf_path=str(tiny_gguf))).llama_kwargs()
    assert kwargs["n_gpu_layers"] == -1 and kwargs["model_path"] == str(tiny_gguf)
    assert kwargs["n_ctx"] == cfg["model"]["max_position_embeddings"] == 2048  # n_ctx null: the model's context


def test_context_is_the_models_unless_the_library_sets_it():
    """A 16k model gets 16k tokens of context in batch and serving alike, with no override."""
    from inference_eval.models.context import context_length
    from inference_eval.serving.servers import SERVERS

    cfg = job_cfg()
    cfg["model"] = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "vicuna-7b-16k.yaml"))
    assert cfg["library"]["n_ctx"] is None and context_length(cfg) == 16384
    argv = SERVERS["llamacpp"]().command(cfg, ModelFiles(gguf_path="m.gguf"), "127.0.0.1", 8000, None).argv
    assert argv[argv.index("--n_ctx") + 1] == "16384"
    cfg["library"]["n_ctx"] = 8192
    assert context_length(cfg) == 8192
    argv = SERVERS["llamacpp"]().command(cfg, ModelFiles(gguf_path="m.gguf"), "127.0.0.1", 8000, None).argv
    assert argv[argv.index("--n_ctx") + 1] == "8192"


def test_eos_does_not_stop_generation(monkeypatch):
    """A model that only ever emits EOS still yields exactly max_tokens ids."""
    from inference_eval.backends.llamacpp_backend import LlamaCppBackend

    class EosOnly:
        def __init__(self, **kwargs):
            self.resets = 0

        def reset(self):
            self.resets += 1

        def generate(self, tokens, **kwargs):
            assert kwargs["temp"] == 0.0 and kwargs["reset"] is True
            while True:
                yield 2

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=EosOnly, __version__="fake"))
    b = LlamaCppBackend(job_cfg(), ModelFiles(gguf_path="unused.gguf"))
    b.load()
    completions = b.generate(MIXED)
    assert [c.output_token_ids for c in completions] == [[2], [2] * 5, [2] * 17]
    assert b._llm.resets == 3


def test_missing_library_and_missing_gguf(monkeypatch):
    from inference_eval.backends.llamacpp_backend import LlamaCppBackend

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(BackendUnavailable, match="llama-cpp-python is not installed"):
        LlamaCppBackend.check_available()
    with pytest.raises(BackendUnavailable, match="needs a GGUF file"):
        LlamaCppBackend(job_cfg(), ModelFiles()).llama_kwargs()
