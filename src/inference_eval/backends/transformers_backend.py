"""Hugging Face Transformers ("TRF") for the batch scenario.

Static batching, as the paper runs TRF: the requests are cut, in dataset order, into batches of
``library.batch_size``; each batch is left-padded (with an attention mask) and generates
``max(max_tokens)`` of its rows with ``min_new_tokens = max_new_tokens`` so EOS cannot stop it.
Each row is then cut to its own ``max_tokens``: the extra tokens a short row computes while its batch
finishes are part of the measured time (the cost of static batching), and are reported as
``padded_generated_tokens`` in the backend stats.

``library.batch_size`` is a positive int (8 is the paper's hand setting), ``auto`` or ``null`` (the
default: ``auto`` on GPU hardware, ``hardware.kind == 'gpu'``, and 8 on CPU, so the CPU default run is
the paper's). Anything else fails in ``__init__``. ``auto`` picks the largest static batch whose KV
cache and activations fit the device: the memory model of ``inference_eval.backends.batch_sizing``
(the worst window of ``b`` consecutive requests, 90 % of the memory free after ``load()``), then, on a
GPU, a probe: one ``generate`` of ``b`` copies of the worst window's longest prompt (``P`` tokens)
behind ``N - 1`` positions already in a zero-filled KV cache, making 1 new token: the cache reaches the
batch's final ``P + N - 1`` entries while a ``P``-token prefill's activations are live (the model's
peak, above the run's real prefill and its real last step; only ``b x P`` tokens are computed). On
an out-of-memory error the cache is emptied and ``b * 3 // 4`` is tried, until one runs. On CPU
there is no probe (no OOM exception there): the model decides. Peak-memory counters are reset after
the probe, so the run's peak is the run's.

The sizing happens in ``prepare(requests)``, which the batch worker calls after ``load()`` and before
its untimed warm-up (``batch_worker.warmup_requests``: copies of the first requests with at most 2
output tokens) and the timed ``generate(requests)``: the probe's time is ``prepare_time_s`` (and
``batch_size_probe_s`` in the stats), never generation time. A later ``generate`` whose requests need
no more memory at the prepared size than the prepared ones (the warm-up, the repeats) keeps it; one
that needs more, or a ``generate`` with no ``prepare`` before it, sizes itself inside that call, and
the stats say so (``batch_size_sized_in_generate``).

Stats (``self.stats``, the record's ``backend_stats``), static mode: ``mode``, ``batch_size`` (the int
used), ``batch_size_setting`` (``"auto"`` or the int as text, after resolving ``null``), ``batches``,
``padded_generated_tokens``, ``attn_implementation``; with ``auto`` also ``batch_size_model_bytes``
(the model's estimate at the chosen size, weights included), ``batch_size_budget_bytes``,
``batch_size_free_bytes``, ``batch_size_model_fit`` (the model's own answer, before the probe),
``batch_size_tried`` (every probed size, in order; empty on CPU), ``batch_size_probe_s``,
``batch_size_probe_peak_bytes`` (GPU) and ``batch_size_sized_in_generate``.

``library.continuous_batching: true`` uses Transformers' continuous-batching manager instead, with a
per-request ``max_new_tokens`` and EOS disabled (``eos_token_id=-1``: its scheduler ignores
``min_new_tokens``).

Weights are random, initialised on the device from the model's config (no weights file), unless
``model.checkpoint`` names a real checkpoint. Decoding is greedy.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Sequence

from tqdm.auto import tqdm

from inference_eval import tensor_parallel
from inference_eval.backends import batch_sizing
from inference_eval.backends.base import Backend, BackendUnavailable, BackendUnsupported
from inference_eval.requests import Completion, Request

ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
DTYPES = ("float32", "float16", "bfloat16")


class TransformersBackend(Backend):
    name = "transformers"

    @classmethod
    def check_available(cls) -> None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"transformers/torch cannot be imported: {exc}") from exc

    def __init__(self, cfg: dict, files):
        super().__init__(cfg, files)
        lib = cfg["library"]
        # a positive int or "auto" (null resolved by the hardware kind); BatchSizeError is a ValueError
        self.batch_size_setting = batch_sizing.resolve_setting(lib.get("batch_size"), cfg["hardware"].get("kind"))
        self.batch_size: int | None = None if self.batch_size_setting == batch_sizing.AUTO else self.batch_size_setting
        self._sizing: dict[str, Any] = {}       # the auto sizing's stats
        self._prepared_bytes: int | None = None  # the model's need at the prepared size, for the prepared requests
        self._weight_bytes: int | None = None
        self.attn_implementation = lib.get("attn_implementation") or "sdpa"
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"library.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")
        self.continuous_batching = bool(lib.get("continuous_batching", False))
        self.dtype_name = str(cfg["model"].get("dtype") or "float32")
        if self.dtype_name not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype_name!r}")
        self.device = str(cfg["hardware"].get("device") or "cpu")
        self.model = None
        self.pad_token_id = 0
        self.stats: dict[str, Any] = {}

    # -- load ---------------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        degree = tensor_parallel.degree(self.cfg)
        if degree > 1:  # a row with this reason, not a run on one GPU filed as a TP row
            raise BackendUnsupported(
                f"library.tensor_parallel = {degree}: this harness's Transformers adapter runs the model in one "
                f"process on one device and does not support tensor parallelism (Transformers' own tp_plan needs "
                f"one process per GPU under torchrun, which the batch worker does not start)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnsupported(f"hardware device is {self.device!r} but torch sees no CUDA device")
        torch.manual_seed(int(self.cfg.get("seed") or 0))
        dtype = getattr(torch, self.dtype_name)
        checkpoint = self.cfg["model"].get("checkpoint")
        if checkpoint:
            self.model = AutoModelForCausalLM.from_pretrained(
                checkpoint, dtype=dtype, attn_implementation=self.attn_implementation, device_map=self.device)
        else:
            if not self.files.hf_dir:
                raise ValueError("transformers backend needs the model's HF config folder (ModelFiles.hf_dir)")
            config = AutoConfig.from_pretrained(self.files.hf_dir)
            with torch.device(self.device):
                self.model = AutoModelForCausalLM.from_config(
                    config, dtype=dtype, attn_implementation=self.attn_implementation)
        self.model.eval()
        self._weight_bytes = None
        if self.batch_size_setting == batch_sizing.AUTO:  # sized for this model, after it is loaded
            self.batch_size, self._prepared_bytes, self._sizing = None, None, {}
        pad = getattr(self.model.config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

    # -- generate -----------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self.model is None:
            raise RuntimeError("TransformersBackend.generate called before load()")
        if self.continuous_batching:
            return self._generate_continuous(requests)
        if self.batch_size_setting == batch_sizing.AUTO and requests and not self._prepared_covers(requests):
            self._size(requests, in_generate=True)  # inside the caller's timing: the stats say so
        return self._generate_static(requests)

    # -- automatic batch size -----------------------------------------------------------------
    def prepare(self, requests: Sequence[Request]) -> None:
        """With ``library.batch_size: auto``, size the static batch for ``requests`` (memory model, then
        the GPU probe); untimed. Nothing to do for a fixed size or continuous batching."""
        if self.model is None:
            raise RuntimeError("TransformersBackend.prepare called before load()")
        if self.continuous_batching or self.batch_size_setting != batch_sizing.AUTO or not requests:
            return
        self._size(requests, in_generate=False)

    def _on_gpu(self) -> bool:
        return self.model.device.type == "cuda"

    def _loaded_bytes(self) -> int:
        """Bytes of the loaded model's parameters and buffers (the memory model's weights term)."""
        if self._weight_bytes is None:
            tensors = list(self.model.parameters()) + list(self.model.buffers())
            self._weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
        return self._weight_bytes

    def _shape(self):
        from inference_eval.theory.ops import ModelShape
        return ModelShape.from_config(self.cfg["model"])

    def _need(self, lengths, batch_size: int) -> tuple:
        return batch_sizing.window_memory(self._shape(), lengths, batch_size, self.attn_implementation,
                                          weight_bytes=self._loaded_bytes())

    def _prepared_covers(self, requests: Sequence[Request]) -> bool:
        if self._prepared_bytes is None or self.batch_size is None:
            return False
        _, memory = self._need([(r.prompt_len, r.max_tokens) for r in requests], self.batch_size)
        return memory.total <= self._prepared_bytes

    def _size(self, requests: Sequence[Request], in_generate: bool) -> None:
        import torch

        t0 = time.perf_counter()
        lengths = [(r.prompt_len, r.max_tokens) for r in requests]
        weights = self._loaded_bytes()
        on_gpu = self._on_gpu()
        if on_gpu:
            self._release()
            free, _total = torch.cuda.mem_get_info(self.model.device)
        else:
            free = batch_sizing.cpu_free_bytes(self.cfg["hardware"].get("memory_gb") or 0, weights)
        budget = batch_sizing.memory_budget(weights, free)
        fit = batch_sizing.fit_batch_size(self._shape(), lengths, budget, self.attn_implementation,
                                          weight_bytes=weights)
        tried: list[int] = []
        self._sizing = {"batch_size_setting": str(self.batch_size_setting), "batch_size_free_bytes": int(free),
                        "batch_size_budget_bytes": int(budget), "batch_size_model_fit": fit.batch_size,
                        "batch_size_tried": tried, "batch_size_sized_in_generate": in_generate}
        chosen = max(1, fit.batch_size)
        try:
            if on_gpu:
                chosen, _ = batch_sizing.probe_batch_size(
                    chosen, lambda b: self._probe(requests, b), on_oom=self._release, tried=tried)
                self._release()
                torch.cuda.reset_peak_memory_stats(self.model.device)  # the run's peak is the run's
            _, memory = self._need(lengths, chosen)
            self.batch_size = chosen
            self._prepared_bytes = memory.total
            self._sizing["batch_size"] = chosen
            self._sizing["batch_size_model_bytes"] = memory.total
        finally:
            self._sizing["batch_size_probe_s"] = time.perf_counter() - t0
            self.stats = {"mode": "static", "attn_implementation": self.attn_implementation, **self._sizing}

    def _probe(self, requests: Sequence[Request], batch_size: int) -> None:
        """One ``generate`` at the peak of the worst window for ``batch_size``, 1 new token: ``batch_size``
        copies of its longest prompt (``P`` tokens) behind ``N - 1`` positions already in the KV cache
        (zeros, allocated, not computed). The cache then grows to the ``P + N - 1`` entries of the batch's
        last step while the prefill's activations are those of ``P`` tokens: the memory model's peak,
        which bounds both the real prefill (a cache of ``P``) and the real last decode step (one token's
        activations). Prefilling all ``P + N - 1`` tokens instead would add activations the run never
        holds (about 20 % of the cache for a 7B model) and reject sizes that fit."""
        import torch
        from transformers import DynamicCache

        lengths = [(r.prompt_len, r.max_tokens) for r in requests]
        window, _ = self._need(lengths, batch_size)
        rows = requests[window.start:window.start + window.size]
        longest = max(rows, key=lambda r: r.prompt_len)
        b, past = window.size, window.new_tokens - 1
        device = self.model.device
        config = self.model.config
        cache = None
        if past:
            cache = DynamicCache(config=config)
            text = config.get_text_config(decoder=True)
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            kv_shape = (b, text.num_key_value_heads, past, head_dim)
            for layer in range(text.num_hidden_layers):
                cache.update(torch.zeros(kv_shape, dtype=self.model.dtype, device=device),
                             torch.zeros(kv_shape, dtype=self.model.dtype, device=device), layer)
        ids = torch.full((b, past + longest.prompt_len), self.pad_token_id, dtype=torch.long)
        ids[:, past:] = torch.tensor(longest.prompt_token_ids, dtype=torch.long)
        mask = torch.ones_like(ids)
        on_gpu = device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache,
                max_new_tokens=1, min_new_tokens=1, do_sample=False, num_beams=1, pad_token_id=self.pad_token_id)
        del out, cache
        self.synchronize()
        if on_gpu:
            self._sizing["batch_size_probe_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))

    def _release(self) -> None:
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate_static(self, requests: Sequence[Request]) -> list[Completion]:
        import torch

        completions: list[Completion] = []
        padded_generated = 0
        size = self.batch_size or 1  # None only for auto with no requests to size for
        batches = [requests[i:i + size] for i in range(0, len(requests), size)]
        with torch.inference_mode():
            for batch in tqdm(batches, desc=f"TRF static batches of {size}", unit="batch",
                              mininterval=2.0):
                new_tokens = max(r.max_tokens for r in batch)
                input_ids, attention_mask = self._left_pad(batch)
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    do_sample=False, num_beams=1, pad_token_id=self.pad_token_id)
                generated = out[:, input_ids.shape[1]:].tolist()
                padded_generated += len(batch) * new_tokens
                for r, ids in zip(batch, generated):
                    completions.append(Completion(id=r.id, output_token_ids=ids[:r.max_tokens],
                                                  requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len))
        self.stats = {"mode": "static", "batch_size": size,
                      "batch_size_setting": str(self.batch_size_setting), "batches": len(batches),
                      "attn_implementation": self.attn_implementation,
                      "padded_generated_tokens": padded_generated}
        if self.batch_size_setting == batch_sizing.AUTO:
            self.stats.update({k: v for k, v in self._sizing.items() if k != "batch_size"})
        return completions

    def _left_pad(self, batch: Sequence[Request]):
        import torch

        width = max(r.prompt_len for r in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):
            ids[row, width - r.prompt_len:] = torch.tensor(r.prompt_token_ids, dtype=torch.long)
            mask[row, width - r.prompt_len:] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def _generate_continuous(self, requests: Sequence[Request]) -> list[Completion]:
        from transformers import GenerationConfig

        gen_config = GenerationConfig(eos_token_id=-1, do_sample=False, pad_token_id=self.pad_token_id,
                                      max_new_tokens=max(r.max_tokens for r in requests))
        timeout_s = float(self.cfg["library"].get("continuous_batching_idle_timeout_s") or 600)
        results: dict[str, Any] = {}
        manager_cm = self.model.continuous_batching_context_manager(
            generation_config=gen_config, continuous_batching_config=self._cb_config(requests), block=True,
            timeout=5, warmup=False)
        with manager_cm as manager:
            for r in requests:
                manager.add_request(input_ids=list(r.prompt_token_ids), request_id=r.id,
                                    max_new_tokens=r.max_tokens, eos_token_id=-1)
            last_progress = time.monotonic()
            with tqdm(total=len(requests), desc="TRF continuous batching", unit="req", mininterval=2.0) as bar:
                while len(results) < len(requests):
                    result = manager.get_result(timeout=1)
                    if result is not None and result.is_finished():
                        results[result.request_id] = result
                        bar.update(1)
                        last_progress = time.monotonic()
                    elif result is None and not manager.is_running():
                        break
                    elif time.monotonic() - last_progress > timeout_s:
                        break
        completions = []
        for r in requests:
            res = results.get(r.id)
            if res is None:
                completions.append(Completion(id=r.id, requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len,
                                              error="no result from the continuous-batching manager"))
                continue
            completions.append(Completion(id=r.id, output_token_ids=list(res.generated_tokens),
                                          requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len,
                                          error=res.error or ""))
        self.stats = {"mode": "continuous", "attn_implementation": self.attn_implementation}
        return completions

    def _cb_config(self, requests: Sequence[Request]):
        """Size the paged KV cache for this workload on CPU (auto-sizing there takes all free RAM, slowly)."""
        from transformers import ContinuousBatchingConfig

        lib = self.cfg["library"]
        num_blocks = lib.get("cb_num_blocks")
        max_batch_tokens = lib.get("cb_max_batch_tokens")
        if self.device == "cpu":
            page = ContinuousBatchingConfig.page_size
            needed = sum(-(-(r.prompt_len + r.max_tokens) // page) for r in requests)
            num_blocks = num_blocks or min(needed + 1, 4096)
            max_batch_tokens = max_batch_tokens or 2048
        return ContinuousBatchingConfig(num_blocks=num_blocks, max_batch_tokens=max_batch_tokens)

    # -- the rest -----------------------------------------------------------------------------
    def synchronize(self) -> None:
        import torch
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.synchronize()

    def resolved_settings(self) -> dict[str, Any]:
        """With ``auto``, the static batch size it chose (the config says only "auto")."""
        if self.continuous_batching or self.batch_size_setting != batch_sizing.AUTO or self.batch_size is None:
            return {}
        return {"batching": f"static batches of {self.batch_size} (library.batch_size auto)"}

    def versions(self) -> dict[str, Any]:
        import torch
        import transformers
        return {"transformers": transformers.__version__, "torch": torch.__version__}

    def close(self) -> None:
        self.model = None
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
