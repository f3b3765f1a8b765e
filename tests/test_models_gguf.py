"""GGUF written from a model config: hyperparameters, tokenizer metadata, and llama.cpp loading it."""

from __future__ import annotations

import pytest

from pathlib import Path

from omegaconf import OmegaConf

from inference_eval.models.spec import ModelSpec

gguf = pytest.importorskip("gguf")
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def spec_of(member: str, **changes) -> ModelSpec:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{member}.yaml"), resolve=True)
    return ModelSpec.from_config({**cfg, **changes})


@pytest.fixture(scope="module")
def vocab():
    from inference_eval.datasets.tokenizer import llama2_vocab_gguf

    return llama2_vocab_gguf()


@pytest.fixture(scope="module")
def tiny_llama_gguf(tmp_path_factory, vocab):
    from inference_eval.models.gguf_writer import write_random_gguf

    return write_random_gguf(spec_of("tiny-llama"), tmp_path_factory.mktemp("gguf") / "f16.gguf", "f16", 0, vocab)


def expected_keys(spec: ModelSpec) -> dict:
    return {
        "general.architecture": "llama",
        "general.name": spec.name,
        "llama.context_length": spec.max_position_embeddings,
        "llama.embedding_length": spec.hidden_size,
        "llama.feed_forward_length": spec.intermediate_size,
        "llama.block_count": spec.num_layers,
        "llama.attention.head_count": spec.num_heads,
        "llama.attention.head_count_kv": spec.num_kv_heads,
        "llama.rope.dimension_count": spec.head_dim,
        "llama.vocab_size": spec.vocab_size,
    }


def test_gguf_hyperparameters_match_config(tiny_llama_gguf):
    from inference_eval.models.gguf_writer import read_gguf_hyperparameters

    spec = spec_of("tiny-llama")
    got = read_gguf_hyperparameters(tiny_llama_gguf)
    for key, value in expected_keys(spec).items():
        assert got[key] == value, key
    assert got["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert got["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert got["tensor_count"] == 2 + 9 * spec.num_layers + 1
    assert "llama.rope.scaling.type" not in got


def test_gguf_tensors_and_tokenizer(tiny_llama_gguf, vocab):
    import numpy as np

    reader = gguf.GGUFReader(str(tiny_llama_gguf))
    tensors = {t.name: t for t in reader.tensors}
    k = tensors["blk.0.attn_k.weight"]
    assert k.tensor_type == gguf.GGMLQuantizationType.F16 and list(k.shape) == [256, 256]
    assert tensors["blk.1.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensors["token_embd.weight"].shape) == [256, 32000]  # GGUF lists dims innermost first
    w = np.asarray(tensors["blk.1.ffn_down.weight"].data, dtype=np.float32)
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    ours = {n: f for n, f in reader.fields.items() if n.startswith("tokenizer.ggml.")}
    ref = {n: f for n, f in gguf.GGUFReader(str(vocab)).fields.items() if n.startswith("tokenizer.ggml.")}
    assert set(ours) == set(ref) and "tokenizer.ggml.tokens" in ours
    for name in ref:
        assert ours[name].contents() == ref[name].contents(), name


@pytest.mark.parametrize("member, changes, extra", [
    ("tiny-mistral", {}, {"llama.rope.freq_base": 1e6}),
    ("tiny-llama", {"rope_scaling": {"type": "linear", "factor": 4.0}, "max_position_embeddings": 8192},
     {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}),
])
def test_gguf_gqa_and_rope_keys(tmp_path, vocab, member, changes, extra):
    from inference_eval.models.gguf_writer import read_gguf_hyperparameters, write_random_gguf

    spec = spec_of(member, **changes)
    got = read_gguf_hyperparameters(write_random_gguf(spec, tmp_path / "m.gguf", "bf16", 1, vocab))
    for key, value in {**expected_keys(spec), **extra}.items():
        assert got[key] == pytest.approx(value) if isinstance(value, float) else got[key] == value, key
    assert got["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_BF16)


def test_gguf_rejects_unknown_dtype(tmp_path, vocab):
    from inference_eval.models.gguf_writer import write_random_gguf

    with pytest.raises(ValueError, match="GGUF dtype 'q4_0' is not supported; valid: f32, f16, bf16"):
        write_random_gguf(spec_of("tiny-llama"), tmp_path / "m.gguf", "q4_0", 0, vocab)


def test_llama_cpp_loads_gguf_with_config_shapes(tiny_llama_gguf):
    llama_cpp = pytest.importorskip("llama_cpp")

    llm = llama_cpp.Llama(model_path=str(tiny_llama_gguf), n_ctx=128, n_threads=1, verbose=False)
    try:
        assert llm.n_vocab() == 32000 and llm.n_embd() == 256 and llm.metadata["llama.context_length"] == "2048"
        assert llm.metadata["llama.attention.head_count_kv"] == "4"
        # llama.cpp's own Llama-2 tokenization, from the copied tokenizer metadata
        assert llm.tokenize(b"Hello world", add_bos=True) == [1, 15043, 3186]
        assert llm.token_eos() == 2 and llm.token_bos() == 1
    finally:
        llm.close()
