"""Hugging Face Transformers ("TRF") for the batch scenario.

Static batching, as the paper runs TRF: the requests are cut, in dataset order, into batches of
``library.batch_size``; each batch is left-padded (with an attention mask) and generates
``max(max_tokens)`` of its rows with ``min_new_tokens = max_new_tokens`` so EOS cannot stop it.
Each row is then cut to its own ``max_tokens``: the extra tokens a short row computes while its batch
finishes are part of the measured time (the cost of static batching), and are reported as
``padded_generated_tokens`` in the backend stats.

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
        size = lib.get("batch_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"library.batch_size must be a positive integer, got {size!r}")
        self.batch_size = size
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
        pad = getattr(self.model.config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

    # -- generate -----------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self.model is None:
            raise RuntimeError("TransformersBackend.generate called before load()")
        if self.continuous_batching:
            return self._generate_continuous(requests)
        return self._generate_static(requests)

    def _generate_static(self, requests: Sequence[Request]) -> list[Completion]:
        import torch

        completions: list[Completion] = []
        padded_generated = 0
        batches = [requests[i:i + self.batch_size] for i in range(0, len(requests), self.batch_size)]
        with torch.inference_mode():
            for batch in tqdm(batches, desc=f"TRF static batches of {self.batch_size}", unit="batch",
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
        self.stats = {"mode": "static", "batch_size": self.batch_size, "batches": len(batches),
                      "attn_implementation": self.attn_implementation,
                      "padded_generated_tokens": padded_generated}
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
