"""TensorRT-LLM ("TRT") through its LLM API on the engine of the ``trtllm_engine`` rule.

API: ``LLM(model=engine_dir, tokenizer=hf_dir)`` loads a saved engine (see
``inference_eval.models.trtllm_engine`` for which ``LLM`` class), ``llm.generate(prompts,
sampling_params=[...], use_tqdm=False)`` takes token-id prompts with one ``SamplingParams`` per prompt
and schedules them all together (in-flight batching); each ``RequestOutput.outputs[0].token_ids``
holds the generated ids. Lengths are forced with ``SamplingParams(max_tokens=n, ignore_eos=True)``;
decoding is greedy (``top_k=1``) and the output is not detokenized. KV-block reuse across requests
(TensorRT-LLM's prefix cache, on by its default) follows ``library.prefix_caching`` (off).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Sequence

from inference_eval.backends.base import Backend, BackendUnavailable, BackendUnsupported
from inference_eval.fairness import prefix_caching_setting
from inference_eval.models.trtllm_engine import TrtLlmNotInstalled, import_trtllm, read_engine_record
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
        return {"model": str(self.engine_dir()), "tokenizer": str(self.files.hf_dir) if self.files.hf_dir else None}

    def sampling_params(self, requests: Sequence[Request]) -> list:
        cls = self._sampling_params_cls
        return [cls(max_tokens=int(r.max_tokens), ignore_eos=True, top_k=1, detokenize=False) for r in requests]

    def kv_cache_config(self):
        """``KvCacheConfig(enable_block_reuse=library.prefix_caching)``: TensorRT-LLM reuses KV blocks
        across requests that share a prefix unless told not to (its default is on); None where this
        tensorrt_llm has no ``llmapi.KvCacheConfig`` (the stats then say the reuse is at its default)."""
        try:
            from tensorrt_llm.llmapi import KvCacheConfig
        except ImportError:
            self.stats["kv_block_reuse"] = "engine default (tensorrt_llm.llmapi.KvCacheConfig not found)"
            return None
        reuse = prefix_caching_setting(self.cfg)
        self.stats["kv_block_reuse"] = reuse
        return KvCacheConfig(enable_block_reuse=reuse)

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
        outputs = self._llm.generate([list(r.prompt_token_ids) for r in requests],
                                     sampling_params=self.sampling_params(requests), use_tqdm=False)
        if len(outputs) != len(requests):
            raise RuntimeError(f"LLM.generate returned {len(outputs)} outputs for {len(requests)} prompts")
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
