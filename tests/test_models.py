"""Model preparation: spec validation, HF config folders, streamed random safetensors, GGUF, engine record."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from inference_eval.models.spec import ModelConfigError, ModelSpec

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def model_cfg(member: str, **changes) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{member}.yaml"), resolve=True)
    cfg.update(changes)
    return cfg


def spec_of(member: str, **changes) -> ModelSpec:
    return ModelSpec.from_config(model_cfg(member, **changes))


# -- spec -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_configured_model_is_valid(name):
    spec = spec_of(name)
    assert spec.name == name
    assert spec.head_dim >= 64 and spec.hidden_size == spec.head_dim * spec.num_heads


def test_paper_shapes():
    assert spec_of("llama2-7b").parameter_count() == pytest.approx(6.74e9, rel=0.01)
    assert spec_of("llama2-13b").parameter_count() == pytest.approx(13.0e9, rel=0.01)
    mistral = spec_of("mistral-7b")
    assert (mistral.kv_dim, mistral.rope_theta) == (1024, 1e6)
    assert mistral.parameter_count() == pytest.approx(7.24e9, rel=0.01)
    assert spec_of("vicuna-7b-16k").rope_scaling_factor == 4.0


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": 250}, "hidden_size 250 is not divisible by num_heads 4"),
    ({"num_heads": 8, "num_kv_heads": 8}, "head_dim = hidden_size/num_heads = 256/8 = 32 is below 64"),
    ({"num_kv_heads": 3}, "num_heads 4 is not a multiple of num_kv_heads 3"),
    ({"vocab_size": 32001}, "vocab_size 32001 does not match the Llama-2 tokenizer"),
    ({"family": "gpt2"}, "family 'gpt2' is not supported"),
    ({"dtype": "int8"}, "dtype 'int8' is not supported"),
    ({"num_layers": 0}, "num_layers must be a positive integer"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn' is not supported"),
])
def test_bad_model_config_names_the_model(changes, message):
    with pytest.raises(ModelConfigError) as err:
        spec_of("tiny-llama", name="bad-tiny", **changes)
    assert "model 'bad-tiny'" in str(err.value)
    assert message in str(err.value)


# -- HF config folder -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    pytest.importorskip("transformers")
    from inference_eval.models.hf import write_hf_config_folder

    root = tmp_path_factory.mktemp("hf")
    return {name: write_hf_config_folder(spec_of(name), root / name).parent for name in ("tiny-llama", "tiny-mistral")}


@pytest.mark.parametrize("name, cls_name", [("tiny-llama", "LlamaConfig"), ("tiny-mistral", "MistralConfig")])
def test_hf_config_round_trips_through_transformers(hf_folders, name, cls_name):
    from transformers import AutoConfig

    spec = spec_of(name)
    config = AutoConfig.from_pretrained(hf_folders[name])
    assert type(config).__name__ == cls_name
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (
        spec.hidden_size, spec.intermediate_size, spec.num_layers)
    assert (config.num_attention_heads, config.num_key_value_heads) == (spec.num_heads, spec.num_kv_heads)
    assert (config.vocab_size, config.max_position_embeddings) == (32000, spec.max_position_embeddings)
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    assert rope["rope_theta"] == spec.rope_theta
    assert str(getattr(config, "dtype", None) or config.torch_dtype).endswith(spec.dtype)


def test_hf_folder_has_llama2_tokenizer(hf_folders):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_folders["tiny-llama"])
    assert len(tok) == 32000
    # llama.cpp's reference tokenization of " Hello world" is [15043, 3186]
    assert tok.encode("Hello world", add_special_tokens=False) == [15043, 3186]
    gen = json.loads((hf_folders["tiny-llama"] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1


def test_vicuna_rope_scaling_reaches_transformers(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoConfig

    from inference_eval.models.hf import hf_config_dict

    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(spec_of("vicuna-7b-16k"))))
    config = AutoConfig.from_pretrained(tmp_path)
    rope = getattr(config, "rope_parameters", None) or config.rope_scaling
    assert rope["rope_type"] == "linear" and rope["factor"] == 4.0
    assert config.max_position_embeddings == 16384


def test_checkpoint_metadata_is_copied(tmp_path):
    from inference_eval.models.hf import write_hf_config_folder

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llama", "real": true}')
    (ckpt / "tokenizer.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"not copied")
    out = write_hf_config_folder(spec_of("tiny-llama", checkpoint=str(ckpt)), tmp_path / "hf")
    assert json.loads(out.read_text())["real"] is True
    assert (out.parent / "tokenizer.json").is_file() and not (out.parent / "model.safetensors").exists()


# -- streamed safetensors ---------------------------------------------------------------------------

def test_random_weights_load_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from inference_eval.models.weights import INIT_STD, write_random_weights

    spec = spec_of("tiny-mistral")
    path = write_random_weights(spec, tmp_path / "w", seed=3)
    tensors = load_file(str(path))
    assert sum(t.size for t in tensors.values()) == spec.parameter_count()
    q = tensors["model.layers.0.self_attn.k_proj.weight"]
    assert q.shape == (spec.kv_dim, spec.hidden_size)
    assert abs(float(q.std()) - INIT_STD) < 0.002
    assert np.all(tensors["model.norm.weight"] == 1.0)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "w")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 15043, 3186]])).logits
    assert torch.isfinite(logits).all() and logits.abs().max() < 50
    # same seed, same bytes; another seed, other bytes
    again = write_random_weights(spec, tmp_path / "w2", seed=3)
    other = write_random_weights(spec, tmp_path / "w3", seed=4)
    assert again.read_bytes() == path.read_bytes() != other.read_bytes()


def test_bfloat16_weights_round_to_nearest(tmp_path):
    torch = pytest.importorskip("torch")
    from inference_eval.models.weights import float32_to_bfloat16_bits

    special = np.array([1.0, -2.5, 3.14159, 1e-3, 65504.0, 1.00390625, 1.01171875], dtype=np.float32)  # incl. ties
    values = np.concatenate([special, np.random.default_rng(0).standard_normal(10_000, dtype=np.float32)])
    ours = float32_to_bfloat16_bits(values)
    ref = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert ours.tolist() == ref.tolist()


def test_sharded_checkpoint_is_merged(tmp_path):
    from safetensors.numpy import load_file, save_file

    from inference_eval.models.weights import write_random_weights

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "tokenizer.json").write_text("{}")
    a, b = np.arange(6, dtype=np.float16).reshape(2, 3), np.ones(4, dtype=np.float32)
    save_file({"a": a}, str(ckpt / "model-00001-of-00002.safetensors"))
    save_file({"b": b}, str(ckpt / "model-00002-of-00002.safetensors"))
    merged = load_file(str(write_random_weights(spec_of("tiny-llama", checkpoint=str(ckpt)), tmp_path / "w", 0)))
    assert np.array_equal(merged["a"], a) and np.array_equal(merged["b"], b)


def test_stream_writer_rejects_wrong_sizes(tmp_path):
    from inference_eval.models.weights import write_safetensors_stream

    with pytest.raises(RuntimeError, match="tensor x has 4 bytes, expected 8"):
        write_safetensors_stream(tmp_path / "m.safetensors", [("x", (2,), "F32")], lambda i, n, s: b"\0" * 4)
    assert not (tmp_path / "m.safetensors").exists()  # atomic: nothing half-written left behind


def test_stream_writer_threads_give_the_same_file_in_order(tmp_path):
    from inference_eval.models.weights import write_safetensors_stream

    tensors = [(f"t{i}", (i + 1,), "F32") for i in range(9)]

    def produce(i, name, shape):
        return np.arange(shape[0], dtype="<f4").tobytes() if i % 2 else np.full(shape, i, dtype="<f4").tobytes()

    one = write_safetensors_stream(tmp_path / "one.safetensors", tensors, produce, threads=1).read_bytes()
    four = write_safetensors_stream(tmp_path / "four.safetensors", tensors, produce, threads=4).read_bytes()
    assert one == four

    def failing(i, name, shape):
        if i == 5:
            raise ValueError("tensor 5 cannot be made")
        return produce(i, name, shape)

    with pytest.raises(ValueError, match="tensor 5"):
        write_safetensors_stream(tmp_path / "bad.safetensors", tensors, failing, threads=4)
    assert not (tmp_path / "bad.safetensors").exists()


def test_safetensors_header_is_aligned(tmp_path):
    from inference_eval.models.weights import write_safetensors_stream

    path = write_safetensors_stream(tmp_path / "m.safetensors", [("x", (3,), "F16")], lambda i, n, s: b"\1\2" * 3)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0


# -- TensorRT-LLM engine record -------------------------------------------------------------------

def test_engine_record_says_not_installed(tmp_path, monkeypatch):
    from inference_eval.models.trtllm_engine import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as where it is not installed
    record = build_engine(spec_of("tiny-llama"), {"max_batch_size": 8}, tmp_path / "w", tmp_path / "hf",
                          tmp_path / "engine.json", {"name": "cpu", "kind": "cpu"}, provenance={"config_hash": "x"})
    on_disk = json.loads((tmp_path / "engine.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["status"] == "not_installed"
    assert "tensorrt_llm not installed" in record["reason"] and "PyPI" in record["reason"]
    assert record["build_config"]["max_batch_size"] == 8 and record["build_config"]["max_seq_len"] == 2048
    assert record["provenance"] == {"config_hash": "x"}


class _FakeBuildConfig:
    def __init__(self, **kw):
        self.kw = kw


def _fake_trtllm(calls: list):
    import types

    class FakeLLM:
        def __init__(self, **kw):
            calls.append(("init", kw))

        def save(self, path):
            calls.append(("save", path))
            Path(path).mkdir(parents=True)
            (Path(path) / "rank0.engine").write_bytes(b"engine")

        def shutdown(self):
            calls.append(("shutdown",))

    mod = types.ModuleType("tensorrt_llm")
    mod.__version__ = "0.0-fake"
    mod.LLM, mod.BuildConfig, mod.SamplingParams = FakeLLM, _FakeBuildConfig, object
    sub = types.ModuleType("tensorrt_llm._tensorrt_engine")
    sub.LLM = FakeLLM
    return {"tensorrt_llm": mod, "tensorrt_llm._tensorrt_engine": sub}


def test_engine_build_through_llm_api_and_cache(tmp_path, monkeypatch):
    from inference_eval.models.trtllm_engine import build_engine

    calls: list = []
    for name, mod in _fake_trtllm(calls).items():
        monkeypatch.setitem(sys.modules, name, mod)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.safetensors").write_bytes(b"weights")
    args = (spec_of("tiny-llama"), {"max_batch_size": 16, "max_num_tokens": 4096}, tmp_path / "w", tmp_path / "hf",
            tmp_path / "rec" / "engine.json", {"name": "h100", "kind": "gpu"})
    record = build_engine(*args)
    assert record["status"] == "ok" and record["reused"] is False
    assert (tmp_path / "rec" / "engine" / "rank0.engine").is_file()
    init = calls[0][1]
    assert init["model"] == str(tmp_path / "w") and init["dtype"] == "float32"
    assert init["build_config"].kw == {"max_batch_size": 16, "max_num_tokens": 4096, "max_seq_len": 2048,
                                       "max_input_len": 2047}
    assert ("shutdown",) in calls
    again = build_engine(*args)
    assert again["status"] == "ok" and again["reused"] is True and len([c for c in calls if c[0] == "init"]) == 1


def test_engine_on_cpu_is_unsupported(tmp_path, monkeypatch):
    from inference_eval.models.trtllm_engine import build_engine

    for name, mod in _fake_trtllm([]).items():
        monkeypatch.setitem(sys.modules, name, mod)
    record = build_engine(spec_of("tiny-llama"), {}, tmp_path, tmp_path, tmp_path / "engine.json",
                          {"name": "cpu", "kind": "cpu"})
    assert record["status"] == "unsupported" and "NVIDIA GPU" in record["reason"]
