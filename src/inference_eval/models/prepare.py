"""Entry points of the models rules: from a job's resolved config to the files a library needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from inference_eval.models.spec import ModelSpec


def model_spec(cfg: Mapping[str, Any]) -> ModelSpec:
    return ModelSpec.from_config(cfg["model"])


def prepare_hf_folder(cfg: Mapping[str, Any], config_json: str | Path) -> Path:
    """``models/<model>/hf/config.json`` (+ generation config and tokenizer), no weights."""
    from inference_eval.models.hf import write_hf_config_folder

    return write_hf_config_folder(model_spec(cfg), Path(config_json).parent)


def prepare_weights(cfg: Mapping[str, Any], safetensors_path: str | Path) -> Path:
    """``models/<model>/weights/model.safetensors``: seeded random weights (or the merged checkpoint)."""
    from inference_eval.models.weights import write_random_weights

    path = Path(safetensors_path)
    if path.name != "model.safetensors":
        raise ValueError(f"weights output must be named model.safetensors, got {path}")
    return write_random_weights(model_spec(cfg), path.parent, seed=int(cfg.get("seed") or 0))


def prepare_gguf(cfg: Mapping[str, Any], gguf_path: str | Path, dtype: str) -> Path:
    """``models/<model>/gguf/<dtype>.gguf``: random weights + the Llama-2 tokenizer for llama.cpp."""
    from inference_eval.datasets.tokenizer import llama2_vocab_gguf
    from inference_eval.models.gguf_writer import write_random_gguf

    spec = model_spec(cfg)
    if spec.checkpoint:
        raise NotImplementedError(
            f"model '{spec.name}': GGUF from a real checkpoint ({spec.checkpoint}) is llama.cpp's converter's job "
            f"(python convert_hf_to_gguf.py {spec.checkpoint} --outtype {dtype}); this rule writes random weights")
    return write_random_gguf(spec, gguf_path, dtype, seed=int(cfg.get("seed") or 0), vocab_gguf=llama2_vocab_gguf())


def prepare_trtllm_engine(cfg: Mapping[str, Any], record_path: str | Path, weights_dir: str | Path,
                          hf_dir: str | Path, started: str | None = None) -> dict[str, Any]:
    """``<hw>/engines/trtllm/<model>/engine.json`` (and the engine beside it when TensorRT-LLM is here)."""
    from inference_eval.hardware import ensure_local_hardware
    from inference_eval.models.trtllm_engine import build_engine
    from inference_eval.report.provenance import provenance

    hardware = cfg["hardware"]
    ensure_local_hardware(hardware["name"], bool(cfg.get("allow_foreign_hardware")))
    return build_engine(model_spec(cfg), cfg["library"], weights_dir, hf_dir, record_path, hardware,
                        provenance=provenance(cfg, started=started))
