"""TensorRT-LLM engine builds through its ``LLM`` API, cached per hardware and model, with a build record.

TensorRT-LLM compiles an engine for one GPU kind, so engines live under
``results/<hardware>/engines/trtllm/<model>/engine/`` beside ``engine.json``, the record that says
``ok`` (engine folder, build settings, time) or why there is none (``not_installed``, ``unsupported``,
``failed``). The batch backend reads that record, never guesses.

API used (TensorRT-LLM >= 1.0; pinned in ``envs/trtllm.in``, checked against its source in
``docs/trtllm.md``): ``tensorrt_llm._tensorrt_engine.LLM`` is the TensorRT-engine flavour of the LLM API
(``tensorrt_llm.LLM`` is the PyTorch flavour, which builds no engine); releases before 1.0 have only
``tensorrt_llm.LLM``, which builds engines. ``LLM(model=hf_dir, tokenizer=..., dtype=...,
build_config=BuildConfig(...))`` builds from a Hugging Face checkpoint (here the random-weight folder of
the ``model_weights`` rule) and loads it; ``llm.save(engine_dir)`` copies the built engine
(``config.json`` + ``rank0.engine``) into ``engine_dir``, and ``LLM(model=engine_dir)`` loads it.
``BuildConfig`` and ``KvCacheConfig`` are pydantic models that reject unknown fields, so only fields that
exist there are passed. An engine for ``library.tensor_parallel`` = t > 1 GPUs is built with
``LLM(..., tensor_parallel_size=t)`` (one ``rank<i>.engine`` per GPU) under ``engines/trtllm-tp<t>/``.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from inference_eval.io import write_json
from inference_eval.models.spec import ModelSpec

NOT_INSTALLED_REASON = ("tensorrt_llm not installed: its wheels are not on PyPI (NVIDIA's index, "
                        "pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com, Linux + CUDA only)")
ENGINE_SUBDIR = "engine"
BUILD_KEY_FILE = "inference_eval_build.json"


class TrtLlmNotInstalled(ImportError):
    pass


def import_trtllm() -> tuple[Any, Any, Any, str]:
    """``(LLM, BuildConfig, SamplingParams, version)`` of the TensorRT-engine LLM API, or ``TrtLlmNotInstalled``."""
    try:
        import tensorrt_llm
    except ImportError as exc:
        raise TrtLlmNotInstalled(f"{NOT_INSTALLED_REASON} ({exc})") from exc
    except Exception as exc:  # CUDA/MPI libraries missing make the import itself fail
        raise TrtLlmNotInstalled(f"tensorrt_llm is installed but cannot be imported: {type(exc).__name__}: {exc}") from exc
    try:
        from tensorrt_llm._tensorrt_engine import LLM
    except ImportError:
        from tensorrt_llm import LLM  # releases before 1.0: the LLM API builds TensorRT engines
    try:  # the LLM API's public home of both (trtllm-serve imports BuildConfig from there too)
        from tensorrt_llm.llmapi import BuildConfig, SamplingParams
    except ImportError:
        try:
            from tensorrt_llm import BuildConfig
        except ImportError:
            from tensorrt_llm.builder import BuildConfig
        from tensorrt_llm import SamplingParams

    return LLM, BuildConfig, SamplingParams, getattr(tensorrt_llm, "__version__", "unknown")


def build_settings(spec: ModelSpec, library_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """BuildConfig fields: scheduler limits from ``conf/library/trtllm.yaml``, sequence length from the model."""
    max_seq_len = int(library_cfg.get("max_seq_len") or spec.max_position_embeddings)
    return {
        "max_batch_size": int(library_cfg.get("max_batch_size") or 256),
        "max_num_tokens": int(library_cfg.get("max_num_tokens") or 8192),
        "max_seq_len": max_seq_len,
        "max_input_len": int(library_cfg.get("max_input_len") or max_seq_len - 1),
    }


DEFAULT_FREE_GPU_MEMORY_FRACTION = 0.9  # trtllm-serve's --free_gpu_memory_fraction default


def free_gpu_memory_fraction(library_cfg: Mapping[str, Any]) -> float:
    """``library.free_gpu_memory_fraction``: the share of free GPU memory (after weights) that the KV cache
    takes, in (0, 1]; batch and serving pass the same value."""
    value = library_cfg.get("free_gpu_memory_fraction")
    value = DEFAULT_FREE_GPU_MEMORY_FRACTION if value is None else value
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"library.free_gpu_memory_fraction must be a number in (0, 1], got {value!r}")
    return fraction


def llm_dtype(spec: ModelSpec) -> str:
    return {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}[spec.dtype]


def engine_dir_for(record_path: str | Path) -> Path:
    return Path(record_path).parent / ENGINE_SUBDIR


def build_engine(spec: ModelSpec, library_cfg: Mapping[str, Any], weights_dir: str | Path,
                 hf_dir: str | Path, record_path: str | Path, hardware_cfg: Mapping[str, Any],
                 provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build (or reuse) the engine and write the record at ``record_path``; returns the record.

    Never raises for a library problem: the record carries status and reason instead.
    """
    record_path = Path(record_path)
    engine_dir = engine_dir_for(record_path)
    settings = build_settings(spec, library_cfg)
    degree = int(library_cfg.get("tensor_parallel") or 1)
    record: dict[str, Any] = {
        "kind": "trtllm_engine", "library": "trtllm", "model": spec.name, "hardware": hardware_cfg.get("name"),
        "status": "", "reason": "", "engine_dir": None, "build_config": settings, "dtype": llm_dtype(spec),
        "tensor_parallel": degree,
        "source_checkpoint": str(weights_dir), "build_time_s": None, "reused": False,
        "api": "tensorrt_llm LLM(model, build_config=BuildConfig(...)).save(engine_dir)",
    }
    try:
        LLM, BuildConfig, _, version = import_trtllm()
        record["tensorrt_llm_version"] = version
        if hardware_cfg.get("kind") != "gpu":
            record.update(status="unsupported", reason=f"TensorRT-LLM needs an NVIDIA GPU; hardware "
                                                       f"'{hardware_cfg.get('name')}' is {hardware_cfg.get('kind')}")
        elif _cached(engine_dir, _build_key(settings, spec, weights_dir, degree)):
            record.update(status="ok", engine_dir=str(engine_dir), reused=True)
        else:
            start = time.perf_counter()
            _build(LLM, BuildConfig, settings, spec, weights_dir, hf_dir, engine_dir,
                   _build_key(settings, spec, weights_dir, degree), degree)
            record.update(status="ok", engine_dir=str(engine_dir), build_time_s=time.perf_counter() - start)
    except TrtLlmNotInstalled as exc:
        record.update(status="not_installed", reason=str(exc))
    except Exception as exc:  # an engine that fails to build is a row with its reason, not a crash
        record.update(status="failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
    if provenance is not None:
        record["provenance"] = dict(provenance)
    write_json(record_path, record)
    return record


def _build(LLM, BuildConfig, settings: dict, spec: ModelSpec, weights_dir, hf_dir, engine_dir: Path,
           key: dict, degree: int = 1) -> None:
    tmp = engine_dir.with_name(engine_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    parallel = {"tensor_parallel_size": degree} if degree > 1 else {}  # one rank<i>.engine per GPU
    llm = LLM(model=str(weights_dir), tokenizer=str(hf_dir), dtype=llm_dtype(spec),
              build_config=BuildConfig(**settings), **parallel)
    try:
        llm.save(str(tmp))
    finally:
        shutdown = getattr(llm, "shutdown", None)
        if callable(shutdown):
            shutdown()
    (tmp / BUILD_KEY_FILE).write_text(json.dumps(key) + "\n")
    if engine_dir.exists():
        shutil.rmtree(engine_dir)
    tmp.rename(engine_dir)


def _build_key(settings: dict, spec: ModelSpec, weights_dir, degree: int = 1) -> dict:
    """What an engine depends on: build settings, model shape, the weights file it was built from and,
    above 1, the tensor-parallel degree."""
    weights = Path(weights_dir) / "model.safetensors"
    stat = weights.stat() if weights.is_file() else None
    key = {"settings": settings, "model": asdict(spec),
           "weights": {"path": str(weights), "size": stat.st_size if stat else None,
                       "mtime_ns": stat.st_mtime_ns if stat else None}}
    if degree > 1:
        key["tensor_parallel"] = degree
    return key


def _cached(engine_dir: Path, key: dict) -> bool:
    """An engine already built here from the same inputs (a build takes minutes)."""
    try:
        return json.loads((engine_dir / BUILD_KEY_FILE).read_text()) == json.loads(json.dumps(key))
    except (OSError, ValueError):
        return False


def read_engine_record(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "engine.json" if (path / "engine.json").is_file() else path.parent / "engine.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"no readable TensorRT-LLM engine record at {path}: {exc}") from exc
