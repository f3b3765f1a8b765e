"""Random weights written to one ``model.safetensors``, one tensor at a time.

The safetensors layout is a little-endian u64 header length, a JSON header naming each tensor's
dtype, shape and byte range, then the raw bytes. Because every shape is known up front, the header
is written first and each tensor is generated, written and dropped in turn: a 7B model needs the
memory of a few of its largest tensors, not twice the model. Tensors are produced by a few threads
ahead of the writer (numpy fills them without the GIL, each from its own seeded stream, so the file
is the same for any number of threads). The same writer merges a sharded real checkpoint
(``model.checkpoint``) into one file.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from inference_eval.io import atomic_path
from inference_eval.models.hf import write_hf_config_folder
from inference_eval.models.spec import ModelSpec

INIT_STD = 0.02  # the HF initializer_range: keeps activations and logits numerically sane
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
# Threads producing tensors ahead of the writer, each holding one tensor and its conversion at a time
# (for a 7B model, about 2 GB at most).
MAX_PRODUCERS = 4
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1}


def hf_tensor_shapes(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """HF Llama/Mistral parameter names and shapes (``[out, in]`` for linear layers), in file order."""
    h, f, v, kv = spec.hidden_size, spec.intermediate_size, spec.vocab_size, spec.kv_dim
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for i in range(spec.num_layers):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (h, h)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.o_proj.weight", (h, h)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (f, h)),
            (f"{p}.mlp.up_proj.weight", (f, h)),
            (f"{p}.mlp.down_proj.weight", (h, f)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def random_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Norm weights are ones (as at initialisation); everything else is N(0, INIT_STD), float32."""
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    out = rng.standard_normal(size=shape, dtype=np.float32)
    out *= INIT_STD
    return out


def tensor_rng(seed: int, index: int) -> np.random.Generator:
    """One independent stream per tensor, so a tensor's values do not depend on the others."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), index])))


def to_storage(array: np.ndarray, st_dtype: str) -> bytes:
    """float32 array -> raw little-endian bytes of the safetensors dtype (BF16 rounds to nearest even)."""
    if st_dtype == "F32":
        return np.ascontiguousarray(array, dtype="<f4").tobytes()
    if st_dtype == "F16":
        return np.ascontiguousarray(array, dtype="<f2").tobytes()
    if st_dtype == "BF16":
        return float32_to_bfloat16_bits(array).tobytes()
    raise ValueError(f"unsupported safetensors dtype {st_dtype!r}")


def float32_to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (``<u2``) of a float32 array, rounded to nearest even (as torch does)."""
    bits = np.array(array, dtype="<f4", copy=True).view("<u4")
    rounding = bits >> 16
    rounding &= 1
    rounding += 0x7FFF
    bits += rounding
    return np.ascontiguousarray(bits.view("<u2")[..., 1::2])  # the high half of each little-endian word


def producer_threads() -> int:
    return max(1, min(MAX_PRODUCERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


def produced_in_order(calls: list[tuple], produce: Callable, threads: int = 1) -> Iterator:
    """``produce(*call)`` for each call, yielded in order, with up to ``threads`` of them made ahead."""
    threads = max(1, int(threads))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tensor") as pool:
        pending: deque = deque()
        upcoming = iter(calls)
        for call in itertools.islice(upcoming, threads):
            pending.append(pool.submit(produce, *call))
        while pending:
            result = pending.popleft().result()
            for call in itertools.islice(upcoming, 1):
                pending.append(pool.submit(produce, *call))
            yield result
            del result


def write_safetensors_stream(path: str | Path, tensors: list[tuple[str, tuple[int, ...], str]],
                             produce: Callable[[int, str, tuple[int, ...]], bytes],
                             metadata: dict[str, str] | None = None, desc: str = "tensors",
                             threads: int = 1) -> Path:
    """Write a safetensors file whose tensors (``name, shape, st_dtype``) come from ``produce``, in order;
    with ``threads`` > 1, that many tensors are produced ahead of the one being written."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, st_dtype in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * _BYTES[st_dtype]
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        made = produced_in_order([(i, name, shape) for i, (name, shape, _) in enumerate(tensors)], produce, threads)
        for (name, _, _), data in zip(tensors, tqdm(made, total=len(tensors), desc=desc, unit="tensor", leave=False)):
            expected = header[name]["data_offsets"]  # type: ignore[index]
            if len(data) != expected[1] - expected[0]:
                raise RuntimeError(f"{path}: tensor {name} has {len(data)} bytes, expected {expected[1] - expected[0]}")
            fh.write(data)
            del data
        fh.flush()
    return path


def write_random_weights(spec: ModelSpec, out_dir: str | Path, seed: int) -> Path:
    """An HF model folder with seeded random weights (``model.safetensors`` + config + tokenizer).

    With ``spec.checkpoint`` set, the checkpoint's own tensors are merged into ``model.safetensors``.
    """
    out = Path(out_dir)
    write_hf_config_folder(spec, out)
    if spec.checkpoint:
        return merge_checkpoint(spec, out / "model.safetensors")
    st_dtype = SAFETENSORS_DTYPES[spec.dtype]
    shapes = hf_tensor_shapes(spec)
    tensors = [(name, shape, st_dtype) for name, shape in shapes]

    def produce(index: int, name: str, shape: tuple[int, ...]) -> bytes:
        return to_storage(random_tensor(name, shape, tensor_rng(seed, index)), tensors[index][2])

    meta = {"format": "pt", "random_weights": "true", "seed": str(seed), "init_std": str(INIT_STD),
            "model": spec.name}
    return write_safetensors_stream(out / "model.safetensors", tensors, produce, meta, desc=f"{spec.name} weights",
                                    threads=producer_threads())


def merge_checkpoint(spec: ModelSpec, path: Path) -> Path:
    """Stream a (possibly sharded) real checkpoint's tensors into one ``model.safetensors``."""
    src = Path(str(spec.checkpoint)).expanduser()
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"model '{spec.name}': model.checkpoint {src} has no *.safetensors files")
    if shards == [src / "model.safetensors"] and path.resolve() != shards[0].resolve():
        with atomic_path(path) as tmp:
            shutil.copyfile(shards[0], tmp)
        return path
    index: list[tuple[Path, int, str, tuple[int, ...], str]] = []  # shard, absolute byte offset, name, shape, dtype
    for shard in shards:
        with shard.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                index.append((shard, 8 + n + meta["data_offsets"][0], name, tuple(meta["shape"]), meta["dtype"]))

    def produce(i: int, name: str, shape: tuple[int, ...]) -> bytes:
        shard, start, _, shape, dtype = index[i]
        with shard.open("rb") as fh:
            fh.seek(start)
            return fh.read(int(np.prod(shape, dtype=np.int64)) * _BYTES[dtype])

    return write_safetensors_stream(path, [(n, s, d) for _, _, n, s, d in index], produce,
                                    {"format": "pt", "source": str(src)}, desc=f"{spec.name} checkpoint")

