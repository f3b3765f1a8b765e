"""A random-weight GGUF file for llama.cpp, written directly with the ``gguf`` package's writer.

llama.cpp's ``llama`` architecture covers Llama-2, Vicuna (linear RoPE scaling) and Mistral-7B-v0.2
(GQA, rope_theta 1e6, no sliding window). The tokenizer metadata (``tokenizer.ggml.*``) is copied
from llama.cpp's own Llama-2 vocabulary GGUF, so llama.cpp tokenizes and detokenizes as for the real
model. Tensors are streamed: all tensor infos are declared first, then each tensor is generated,
written and dropped, so a 7B model needs the memory of one tensor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from inference_eval.io import atomic_path
from inference_eval.models.spec import RMS_NORM_EPS, ModelSpec
from inference_eval.models.weights import (float32_to_bfloat16_bits, produced_in_order, producer_threads,
                                          random_tensor, tensor_rng)

GGUF_DTYPES = ("f32", "f16", "bf16")
TOKENIZER_PREFIX = "tokenizer.ggml."


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]  # numpy order ([out, in]); GGUF stores the dims reversed
    is_norm: bool


def gguf_tensors(spec: ModelSpec) -> list[GgufTensor]:
    """llama.cpp tensor names for the llama architecture, in the order llama.cpp's converter writes them."""
    h, f, v, kv = spec.hidden_size, spec.intermediate_size, spec.vocab_size, spec.kv_dim
    out = [GgufTensor("token_embd.weight", (v, h), False)]
    for i in range(spec.num_layers):
        b = f"blk.{i}"
        out += [
            GgufTensor(f"{b}.attn_norm.weight", (h,), True),
            GgufTensor(f"{b}.attn_q.weight", (h, h), False),
            GgufTensor(f"{b}.attn_k.weight", (kv, h), False),
            GgufTensor(f"{b}.attn_v.weight", (kv, h), False),
            GgufTensor(f"{b}.attn_output.weight", (h, h), False),
            GgufTensor(f"{b}.ffn_norm.weight", (h,), True),
            GgufTensor(f"{b}.ffn_gate.weight", (f, h), False),
            GgufTensor(f"{b}.ffn_up.weight", (f, h), False),
            GgufTensor(f"{b}.ffn_down.weight", (h, f), False),
        ]
    out += [GgufTensor("output_norm.weight", (h,), True), GgufTensor("output.weight", (v, h), False)]
    return out


def _check_dtype(dtype: str) -> None:
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"GGUF dtype {dtype!r} is not supported; valid: {', '.join(GGUF_DTYPES)}")


def _storage(dtype: str, is_norm: bool):
    """(numpy storage dtype, GGML type) of a tensor; llama.cpp wants 1-D norm weights in f32."""
    import gguf

    if is_norm or dtype == "f32":
        return np.dtype("<f4"), gguf.GGMLQuantizationType.F32
    if dtype == "f16":
        return np.dtype("<f2"), gguf.GGMLQuantizationType.F16
    return np.dtype("<u2"), gguf.GGMLQuantizationType.BF16


def _file_type(dtype: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]


def add_hyperparameters(writer, spec: ModelSpec, dtype: str) -> None:
    import gguf

    writer.add_name(spec.name)
    writer.add_context_length(spec.max_position_embeddings)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_block_count(spec.num_layers)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
    writer.add_vocab_size(spec.vocab_size)
    if spec.rope_scaling_factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(spec.rope_scaling_factor)
    writer.add_file_type(_file_type(dtype))


def tokenizer_fields(vocab_gguf: str | Path) -> list[tuple[str, Any, Any, Any]]:
    """``(key, value, value_type, array_sub_type)`` of every ``tokenizer.ggml.*`` key in a GGUF file."""
    path = Path(vocab_gguf)
    return _tokenizer_fields(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _tokenizer_fields(path: str, _mtime_ns: int) -> list[tuple[str, Any, Any, Any]]:
    import gguf

    vocab_gguf = path
    reader = gguf.GGUFReader(path)
    out = []
    for name, field in reader.fields.items():
        if not name.startswith(TOKENIZER_PREFIX):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        out.append((name, _field_value(field, vtype, sub), vtype, sub))
    if not any(k == TOKENIZER_PREFIX + "tokens" for k, *_ in out):
        raise ValueError(f"{vocab_gguf}: no {TOKENIZER_PREFIX}tokens key; not a vocabulary GGUF")
    return out


def _field_value(field, vtype, sub) -> Any:
    import gguf

    if hasattr(field, "contents"):  # gguf >= 0.11
        return field.contents()

    def one(idx: int, kind) -> Any:
        part = field.parts[idx]
        if kind == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        value = part.tolist()[0]
        return bool(value) if kind == gguf.GGUFValueType.BOOL else value

    if vtype == gguf.GGUFValueType.ARRAY:
        return [one(i, sub) for i in field.data]
    return one(field.data[0], vtype)


def write_random_gguf(spec: ModelSpec, path: str | Path, dtype: str, seed: int, vocab_gguf: str | Path) -> Path:
    """Write ``path``: llama-architecture GGUF of ``spec``'s shape, N(0, 0.02) weights, Llama-2 tokenizer."""
    import gguf

    _check_dtype(dtype)
    tokenizer = tokenizer_fields(vocab_gguf)
    n_tokens = len(next(v for k, v, *_ in tokenizer if k == TOKENIZER_PREFIX + "tokens"))
    if n_tokens != spec.vocab_size:
        raise ValueError(f"model '{spec.name}': vocab_size {spec.vocab_size} but the tokenizer in {vocab_gguf} "
                         f"has {n_tokens} tokens")
    tensors = gguf_tensors(spec)
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="llama")
        try:
            add_hyperparameters(writer, spec, dtype)
            for key, value, vtype, sub in tokenizer:
                writer.add_key_value(key, value, vtype, sub_type=sub)
            for t in tensors:
                np_dtype, ggml_type = _storage(dtype, t.is_norm)
                nbytes = int(np.prod(t.shape, dtype=np.int64)) * np_dtype.itemsize
                writer.add_tensor_info(t.name, t.shape, np_dtype, nbytes, raw_dtype=ggml_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            def produce(index: int, t) -> np.ndarray:
                values = random_tensor(t.name, t.shape, tensor_rng(seed, index))
                np_dtype, _ = _storage(dtype, t.is_norm)
                return float32_to_bfloat16_bits(values) if np_dtype == np.dtype("<u2") else values.astype(np_dtype)

            made = produced_in_order(list(enumerate(tensors)), produce, producer_threads())
            for data in tqdm(made, total=len(tensors), desc=f"{spec.name} {dtype}.gguf", unit="tensor", leave=False):
                writer.write_tensor_data(data)
                del data
        finally:
            writer.close()
    return path


def read_gguf_hyperparameters(path: str | Path) -> dict[str, Any]:
    """The ``general.*`` and ``llama.*`` keys of a GGUF file (for checks and records)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for name, field in reader.fields.items():
        if name.startswith(("general.", "llama.")):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            out[name] = _field_value(field, vtype, sub)
    out["tensor_count"] = len(reader.tensors)
    return out
