"""The offline Llama-2 tokenizer (llama.cpp's vocabulary from the llama-cpp-python sdist on PyPI).

Needs the package index once (pip download); skipped with the reason when that fails.
"""

from __future__ import annotations

import time

import pytest

from inference_eval.datasets import tokenizer as T


def test_matches_llama_cpp_reference_tokenizations(llama2):
    cases = T.reference_cases()
    assert len(cases) == 47
    mismatches = [c.text for c in cases if T.encode(llama2, c.text) != list(c.token_ids)]
    assert mismatches == [], f"{len(cases) - len(mismatches)}/47 match"


def test_known_ids_and_special_tokens(llama2):
    assert T.encode(llama2, "Hello world") == [15043, 3186]
    assert llama2.encode("Hello world") == [T.BOS_ID, 15043, 3186]  # HF default adds BOS like Llama-2
    assert (llama2.bos_token_id, llama2.eos_token_id, len(llama2)) == (1, 2, 32000)
    assert llama2.decode(T.encode(llama2, "[INST] Hi there [/INST]")) == "[INST] Hi there [/INST]"


def test_cached_second_call_is_free(llama2):
    start = time.perf_counter()
    assert T.load_llama2_tokenizer() is llama2
    assert T.llama2_vocab_gguf().is_file()
    assert time.perf_counter() - start < 0.5
    assert (T.llama2_vocab_gguf().parent / "hf" / "tokenizer.json").is_file()


def test_saved_tokenizer_loads_back_with_the_fix(llama2, tmp_path):
    from transformers import AutoTokenizer

    written = T.save_llama2_tokenizer(tmp_path / "model")
    assert {p.name for p in written} >= {"tokenizer.json", "tokenizer_config.json"}
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    cases = T.reference_cases()
    assert sum(T.encode(reloaded, c.text) == list(c.token_ids) for c in cases) == 47


def test_tokenizer_id_names_the_source(llama2):
    ident = T.tokenizer_id()
    assert "llama-cpp-python==0.3.36" in ident and "ggml-vocab-llama-spm.gguf" in ident
    assert T.tokenizer_id("meta-llama/Llama-2-7b-chat-hf") == "meta-llama/Llama-2-7b-chat-hf"


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCE_EVAL_CACHE", str(tmp_path))
    monkeypatch.setattr(T, "LLAMA_CPP_PYTHON", "llama-cpp-python==0.0.0.dev-not-a-version")
    with pytest.raises(T.TokenizerUnavailable, match="pip download"):
        T.llama2_vocab_gguf()
