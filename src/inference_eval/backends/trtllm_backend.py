"""TensorRT-LLM ("TRT") through its LLM API on the engine of the ``trtllm_engine`` rule.

API (checked against the pinned release's source, ``docs/trtllm.md``): ``LLM(model=engine_dir,
tokenizer=hf_dir, kv_cache_config=KvCacheConfig(...))`` loads a saved engine (see
``inference_eval.models.trtllm_engine`` for which ``LLM`` class). ``llm.generate(prompts,
sampling_params=[...], use_tqdm=False)`` takes a list of token-id lists with one ``SamplingParams`` per
prompt, submits them all at once (in-flight batching) and returns one ``RequestOutput`` per prompt; a
flat list of ints would be read as ONE prompt and answered with one ``RequestOutput``, not a list, so
prompts are always passed as a list of lists. ``RequestOutput.outputs[0].token_ids`` holds the generated
ids only (``exclude_input_from_output`` defaults to true). Lengths are forced with
``SamplingParams(max_tokens=n, ignore_eos=True)``; decoding is greedy (``top_k=1``) and the output is
not detokenized. KV-block reuse across requests (TensorRT-LLM's prefix cache, on by its default) follows
``library.prefix_caching`` (off); the KV-cache memory share is ``library.free_gpu_memory_fraction``,
passed explicitly so that batch and ``trtllm-serve`` size the cache alike.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Sequence

from inference_eval import tensor_parallel
from inference_eval.backends.base import Backend, BackendUnavailable, BackendUnsupported
from inference_eval.fairness import prefix_caching_setting
from inference_eval.models.trtllm_engine import (TrtLlmNotInstalled, free_gpu_memory_fraction, import_trtllm,
                                                 read_engine_record)
from inference_eval.requests import Completion, Request


class TrtLlmBackend(Backend):
    name = "trtllm"

    def __init__(self, cfg: dict, files):
        super().__init__(cfg, files)
        self._llm = None
        self._sampling_params_cls = None
        self.engine_record: dict[str, Any] = {}
        self.stats: dict[str, Any] = {"prompt_format": "token ids", "scheduling": "in-flight batching (one generate call)"}

    @classmethod
    def check_available(cls) -> None:
        try:
            import_trtllm()
        except TrtLlmNotInstalled as exc:
            raise BackendUnavailable(str(exc)) from exc

    def engine_dir(self) -> Path:
        """The built engine, from the engine rule's record; its status and reason when there is none."""
        if not self.files.engine_record:
            raise BackendUnavailable("TensorRT-LLM needs an engine; the models rule `trtllm_engine` gave none")
        record = read_engine_record(self.files.engine_record)
        self.engine_record = record
        status = record.get("status")
        if status == "ok" and record.get("engine_dir") and Path(record["engine_dir"]).is_dir():
            return Path(record["engine_dir"])
        reason = record.get("reason") or f"engine record status {status!r} with no engine folder"
        if status == "not_installed":
            raise BackendUnavailable(reason)
        raise BackendUnsupported(f"no TensorRT-LLM engine ({status}): {reason}")

    def llm_kwargs(self) -> dict[str, Any]:
        kwargs = {"model": str(self.engine_dir()), "tokenizer": str(self.files.hf_dir) if self.files.hf_dir else None}
        degree = tensor_parallel.degree(self.cfg)
        if degree > 1:  # the engine was built for this many GPUs (models.trtllm_engine); the LLM runs one rank each
            kwargs["tensor_parallel_size"] = degree
        return kwargs

    def sampling_params(self, requests: Sequence[Request]) -> list:
        cls = self._sampling_params_cls
        return [cls(max_tokens=int(r.max_tokens), ignore_eos=True, top_k=1, detokenize=False) for r in requests]

    def kv_cache_config(self):
        """``KvCacheConfig(enable_block_reuse=library.prefix_caching, free_gpu_memory_fraction=...)``:
        TensorRT-LLM reuses KV blocks across requests that share a prefix unless told not to (its default
        is on); None where this tensorrt_llm has no ``llmapi.KvCacheConfig`` (the stats then say the reuse
        is at its default)."""
        try:
            from tensorrt_llm.llmapi import KvCacheConfig
        except ImportError:
            self.stats["kv_block_reuse"] = "engine default (tensorrt_llm.llmapi.KvCacheConfig not found)"
            return None
        reuse = prefix_caching_setting(self.cfg)
        fraction = free_gpu_memory_fraction(self.cfg["library"])
        self.stats.update(kv_block_reuse=reuse, free_gpu_memory_fraction=fraction)
        return KvCacheConfig(enable_block_reuse=reuse, free_gpu_memory_fraction=fraction)

    def load(self) -> None:
        LLM, _, SamplingParams, version = import_trtllm()
        self._sampling_params_cls = SamplingParams
        kwargs = {k: v for k, v in self.llm_kwargs().items() if v is not None}
        kv_cache_config = self.kv_cache_config()
        if kv_cache_config is not None:
            kwargs["kv_cache_config"] = kv_cache_config
        self._llm = LLM(**kwargs)
        self.stats.update(tensorrt_llm=version, engine_dir=kwargs["model"],
                          build_config=self.engine_record.get("build_config"))

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self._llm is None:
            raise RuntimeError("TrtLlmBackend.generate called before load()")
        if not requests:
            return []  # LLM.generate reads inputs[0] to tell one prompt from a batch
        outputs = self._llm.generate([list(r.prompt_token_ids) for r in requests],
                                     sampling_params=self.sampling_params(requests), use_tqdm=False)
        if not isinstance(outputs, list) or len(outputs) != len(requests):
            got = len(outputs) if isinstance(outputs, list) else f"one {type(outputs).__name__}"
            raise RuntimeError(f"LLM.generate returned {got} outputs for {len(requests)} prompts")
        out = []
        for r, res in zip(requests, outputs):
            seqs = getattr(res, "outputs", None) or []
            if not seqs:
                out.append(Completion(id=r.id, requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len,
                                      error="TensorRT-LLM returned no output sequence"))
                continue
            out.append(Completion(id=r.id, output_token_ids=[int(t) for t in seqs[0].token_ids],
                                  requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len))
        return out

    def resolved_settings(self) -> dict[str, Any]:
        reuse = self.stats.get("kv_block_reuse")
        return {"prefix_caching": reuse} if isinstance(reuse, bool) else {}

    def versions(self) -> dict[str, Any]:
        try:
            return {"tensorrt_llm": import_trtllm()[3]}
        except TrtLlmNotInstalled:
            return {}

    def close(self) -> None:
        if self._llm is not None:
            shutdown = getattr(self._llm, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self._llm = None
            gc.collect()
