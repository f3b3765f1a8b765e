"""Tensor parallelism: the degree a job runs at, how output paths name it, and the checks on it.

A job's degree t is ``library.tensor_parallel`` (1 in every ``conf/library/*.yaml``): the number of
GPUs one copy of the model is split over. Output paths carry it in their library part, so a degree-2
vLLM row is ``results/<hw>/batch/vllm-tp2/<model>/<dataset>.json`` beside degree 1's
``batch/vllm/...``: ``PipelineConfig.job(library="vllm-tp2")`` composes the ``vllm`` member with
``library.tensor_parallel=2``, and a plain library name always runs at degree 1, so every path says its
degree. A degree above the hardware profile's ``gpus`` stops when the config is composed, naming both.
Each backend and server launcher passes the degree in its engine's own way (docs/tensor-parallel.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# "<library>-tp<degree>": the library member and the degree (2 or more)
_SUFFIX = re.compile(r"^(?P<base>.+)-tp(?P<degree>[0-9]+)$")


class TensorParallelError(ValueError):
    """A library name with a bad degree suffix, or a degree the hardware or model cannot take."""


def split_library(choice: str) -> tuple[str, int | None]:
    """``"vllm-tp2"`` -> ``("vllm", 2)``; a name without a suffix -> ``(name, None)``."""
    m = _SUFFIX.match(str(choice))
    if not m:
        return str(choice), None
    degree = int(m.group("degree"))
    if degree < 2:
        raise TensorParallelError(f"library {choice!r}: a -tp<N> suffix names N >= 2 GPUs; degree 1 is the plain "
                                  f"library name {m.group('base')!r}")
    return m.group("base"), degree


def base_library(choice: str) -> str:
    """The ``conf/library`` member a (possibly suffixed) library name runs: ``vllm-tp2`` -> ``vllm``."""
    return split_library(choice)[0]


def library_choice(base: str, degree: int) -> str:
    """The library name that output paths use for ``base`` at ``degree`` (degree 1: ``base`` itself)."""
    if int(degree) < 1:
        raise TensorParallelError(f"tensor-parallel degree must be >= 1, got {degree!r}")
    return str(base) if int(degree) == 1 else f"{base}-tp{int(degree)}"


def degree(cfg: Mapping[str, Any]) -> int:
    """``library.tensor_parallel`` of a resolved config (null or missing: 1)."""
    value = (cfg.get("library") or {}).get("tensor_parallel")
    return 1 if value is None else int(value)


def hardware_gpus(hw: Mapping[str, Any]) -> int:
    """GPUs a run may use on ``hw``: its ``gpus`` key; without one, 1 on GPU hardware and 0 on CPU."""
    value = hw.get("gpus")
    if value is None:
        return 1 if hw.get("kind") == "gpu" else 0
    return int(value)


def degree_errors(cfg: Mapping[str, Any]) -> list[str]:
    """Why the config's degree cannot run (empty: it can): more GPUs than the hardware has, or a split
    the model's heads do not allow (the query heads and the KV heads must divide over the GPUs, or each
    KV head be copied to a whole number of them: what vLLM, TensorRT-LLM and DeepSpeed require)."""
    t = degree(cfg)
    if t == 1:
        return []
    out = []
    hw = cfg.get("hardware") or {}
    gpus = hardware_gpus(hw)
    if t > gpus:
        out.append(f"library.tensor_parallel = {t} needs {t} GPUs but hardware '{hw.get('name')}' has gpus = {gpus} "
                   f"(conf/hardware/{hw.get('name')}.yaml); on a machine with more, pass hardware.gpus=N "
                   f"(--config overrides=\"hardware.gpus={t}\")")
    model = cfg.get("model") or {}
    heads, kv = model.get("num_heads"), model.get("num_kv_heads") or model.get("num_heads")
    if isinstance(heads, int) and heads % t:
        out.append(f"library.tensor_parallel = {t} does not divide model {model.get('name')}'s num_heads = {heads}")
    elif isinstance(kv, int) and kv % t and t % kv:
        out.append(f"library.tensor_parallel = {t} and model {model.get('name')}'s num_kv_heads = {kv}: neither "
                   f"divides the other")
    return out


def check(cfg: Mapping[str, Any]) -> None:
    problems = degree_errors(cfg)
    if problems:
        raise TensorParallelError("; ".join(problems))

