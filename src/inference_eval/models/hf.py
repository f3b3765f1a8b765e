"""Hugging Face model folders without weights: ``config.json``, ``generation_config.json``, tokenizer.

The config is written in the classic Hub layout (``rope_theta`` / ``rope_scaling`` keys, as the real
Llama-2 and Mistral checkpoints ship it), which every transformers version, vLLM, DeepSpeed-MII and
TensorRT-LLM read. With ``model.checkpoint`` set, the real checkpoint's config and tokenizer are
copied instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from inference_eval.io import write_json
from inference_eval.models.spec import BOS_TOKEN_ID, EOS_TOKEN_ID, RMS_NORM_EPS, UNK_TOKEN_ID, ModelSpec

# Files of an HF checkpoint that describe it without weights.
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def hf_config_dict(spec: ModelSpec) -> dict[str, Any]:
    """``config.json`` content for a random-weight model of ``spec``'s shape."""
    cfg: dict[str, Any] = {
        "architectures": [ARCHITECTURES[spec.family]],
        "model_type": spec.family,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": spec.rope_theta,
        "rope_scaling": ({"type": "linear", "rope_type": "linear", "factor": spec.rope_scaling_factor}
                         if spec.rope_scaling_factor else None),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "torch_dtype": spec.dtype,
    }
    if spec.family == "llama":
        cfg["pretraining_tp"] = 1
        cfg["mlp_bias"] = False
    else:
        cfg["sliding_window"] = None  # Mistral-7B-v0.2 dropped the sliding window
    return cfg


def generation_config_dict(spec: ModelSpec) -> dict[str, Any]:
    # Greedy by default; benchmarks force lengths themselves (EOS ignored), so no sampling knobs here.
    return {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID, "pad_token_id": UNK_TOKEN_ID,
            "do_sample": False, "max_length": spec.max_position_embeddings}


def write_hf_config_folder(spec: ModelSpec, out_dir: str | Path) -> Path:
    """Write ``config.json``, ``generation_config.json`` and the tokenizer files into ``out_dir``.

    ``config.json`` is written last: it is the rule's output, so it appears only once the folder is whole.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if spec.checkpoint:
        copy_checkpoint_metadata(spec, out)
        return out / "config.json"
    write_tokenizer(spec, out)
    write_json(out / "generation_config.json", generation_config_dict(spec))
    write_json(out / "config.json", hf_config_dict(spec))
    return out / "config.json"


def write_tokenizer(spec: ModelSpec, out: Path) -> None:
    if spec.tokenizer != "llama2":
        raise ValueError(f"model '{spec.name}': no offline source for tokenizer {spec.tokenizer!r}")
    from inference_eval.datasets.tokenizer import save_llama2_tokenizer

    save_llama2_tokenizer(out)


def copy_checkpoint_metadata(spec: ModelSpec, out: Path) -> None:
    """Copy a real checkpoint's config and tokenizer files (not its weights) into ``out``."""
    src = Path(str(spec.checkpoint)).expanduser()
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"model '{spec.name}': model.checkpoint {src} has no config.json")
    copied = []
    for name in TOKENIZER_FILES + CONFIG_FILES[::-1]:  # config.json last (the rule's output)
        if (src / name).is_file():
            _copy_atomic(src / name, out / name)
            copied.append(name)
    if not any(n.startswith("tokenizer") for n in copied):
        raise FileNotFoundError(f"model '{spec.name}': model.checkpoint {src} has no tokenizer files "
                                f"(looked for {', '.join(TOKENIZER_FILES)})")


def _copy_atomic(src: Path, dst: Path) -> None:
    from inference_eval.io import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
