"""DeepSpeed-MII ("MII") through its non-persistent pipeline, ``mii.pipeline``.

API (deepspeed-mii >= 0.2): ``pipe = mii.pipeline(model_name_or_path, tensor_parallel=..., max_length=...)``
loads an HF folder into DeepSpeed-FastGen's ragged engine; ``pipe(prompts, max_new_tokens=n,
ignore_eos=True, do_sample=False)`` schedules all prompts of one call together (continuous batching,
Dynamic SplitFuse) and returns one ``Response`` per prompt with ``generated_text``, ``prompt_length``,
``generated_length`` and ``finish_reason``; ``pipe.destroy()`` frees the engine.

What that API cannot carry, and what is recorded in ``stats`` instead:
- prompts are strings (the pipeline tokenizes them), so token-id prompts are decoded to text with the
  model folder's tokenizer; ``prompt_length`` comes back and is compared with ours
  (``prompt_length_mismatches``);
- generated token ids are not returned, so the output count is the engine's ``generated_length``
  (``Completion.reported_tokens``) and is checked against ``max_tokens`` like any other;
- one call takes one set of generation arguments, so requests are grouped by ``max_tokens`` and
  each group is one pipeline call (``groups``).
Weights: the random-weight folder of the ``model_weights`` rule (MII loads weights from files).
"""

from __future__ import annotations

import gc
from collections import defaultdict
from typing import Any, Sequence

from inference_eval.backends.base import Backend, BackendUnavailable, BackendUnsupported
from inference_eval.requests import Completion, Request

NOT_INSTALLED = ("deepspeed-mii is not installed: it needs CUDA kernels (deepspeed-kernels), no CPU build "
                 "(pip install deepspeed-mii on a Linux machine with an NVIDIA GPU, compute capability >= 8.0)")


class MiiBackend(Backend):
    name = "mii"

    def __init__(self, cfg: dict, files):
        super().__init__(cfg, files)
        self._pipe = None
        self._tokenizer = None
        self.stats: dict[str, Any] = {"prompt_format": "text (mii.pipeline accepts strings only)",
                                      "output_count": "Response.generated_length (no token ids returned)"}

    @classmethod
    def check_available(cls) -> None:
        try:
            import mii  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"{NOT_INSTALLED} ({exc})") from exc
        except Exception as exc:  # deepspeed raises at import when CUDA/ops are missing
            raise BackendUnavailable(f"deepspeed-mii is installed but cannot be imported: "
                                     f"{type(exc).__name__}: {exc}") from exc

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``mii.pipeline`` (all ``ModelConfig`` fields)."""
        lib, hw = self.cfg["library"], self.cfg.get("hardware", {})
        if hw.get("kind") != "gpu":
            raise BackendUnsupported(f"DeepSpeed-MII runs only on NVIDIA GPUs; hardware '{hw.get('name')}' is "
                                     f"{hw.get('kind')}")
        model_dir = self.cfg["model"].get("checkpoint") or self.files.weights_dir
        if not model_dir:
            raise BackendUnavailable("DeepSpeed-MII needs a model folder with weights; the models rule "
                                     "`model_weights` gave none (ModelFiles.weights_dir)")
        kwargs: dict[str, Any] = {"model_name_or_path": str(model_dir),
                                  "tensor_parallel": int(lib.get("tensor_parallel") or 1)}
        if lib.get("max_length"):
            kwargs["max_length"] = int(lib["max_length"])
        return kwargs

    @staticmethod
    def generate_kwargs(max_tokens: int) -> dict[str, Any]:
        """Per-call generation arguments (``GenerateParamsConfig`` fields): exact length, greedy."""
        return {"max_new_tokens": int(max_tokens), "min_new_tokens": int(max_tokens), "ignore_eos": True,
                "do_sample": False, "return_full_text": False}

    @staticmethod
    def load_tokenizer(model_dir: str):
        """The tokenizer MII itself will use (the model folder's), to turn token ids back into text."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir)

    def load(self) -> None:
        import mii

        kwargs = self.pipeline_kwargs()
        self._tokenizer = self.load_tokenizer(kwargs["model_name_or_path"])
        self._pipe = mii.pipeline(**kwargs)
        self.stats["pipeline_kwargs"] = kwargs

    def prompt_text(self, r: Request) -> str:
        """The request as the text MII will tokenize: the dataset's text, or its ids decoded."""
        if r.prompt:
            return r.prompt
        return self._tokenizer.decode(list(r.prompt_token_ids), skip_special_tokens=True)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self._pipe is None:
            raise RuntimeError("MiiBackend.generate called before load()")
        groups: dict[int, list[Request]] = defaultdict(list)
        for r in requests:
            groups[r.max_tokens].append(r)
        by_id: dict[str, Completion] = {}
        prompt_mismatches = 0
        for max_tokens, group in sorted(groups.items()):
            responses = self._pipe([self.prompt_text(r) for r in group], **self.generate_kwargs(max_tokens))
            if len(responses) != len(group):
                raise RuntimeError(f"mii.pipeline returned {len(responses)} responses for {len(group)} prompts")
            for r, resp in zip(group, responses):
                engine_prompt = int(resp.prompt_length)
                prompt_mismatches += engine_prompt != r.prompt_len
                by_id[r.id] = Completion(id=r.id, requested_tokens=r.max_tokens, prompt_tokens=engine_prompt,
                                         reported_tokens=int(resp.generated_length))
        self.stats.update(groups=len(groups), prompt_length_mismatches=prompt_mismatches)
        return [by_id[r.id] for r in requests]

    def versions(self) -> dict[str, Any]:
        import importlib.metadata as md

        out = {}
        for dist in ("deepspeed-mii", "deepspeed", "deepspeed-kernels"):
            try:
                out[dist] = md.version(dist)
            except md.PackageNotFoundError:
                pass
        return out

    def peak_memory_gb(self) -> float | None:
        try:
            import torch
            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 1e9
        except ImportError:
            pass
        return None

    def close(self) -> None:
        if self._pipe is not None:
            destroy = getattr(self._pipe, "destroy", None)
            if callable(destroy):
                destroy()
            self._pipe = None
            gc.collect()
