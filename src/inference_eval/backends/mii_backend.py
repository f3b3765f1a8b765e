"""DeepSpeed-MII ("MII") through its non-persistent pipeline, ``mii.pipeline``.

API (deepspeed-mii >= 0.2): ``pipe = mii.pipeline(model_name_or_path, tensor_parallel=..., max_length=...)``
loads an HF folder into DeepSpeed-FastGen's ragged engine; ``pipe(prompts, max_new_tokens=n,
ignore_eos=True, do_sample=False)`` schedules all prompts of one call together (continuous batching,
Dynamic SplitFuse) and returns one ``Response`` per prompt with ``generated_text``, ``prompt_length``,
``generated_length`` and ``finish_reason``; ``pipe.destroy()`` frees the engine.

The public call takes text prompts and one set of generation arguments for all of them. So that MII
gets the same workload as the other libraries (every request submitted at once, token-id prompts,
each with its own length), ``generate`` submits through the pipeline's own per-request hook
(``_put_request(uid, text, kwargs)``, which the call runs once per prompt, uid = its index): each
request goes in as its token ids with its own ``max_new_tokens`` (``stats['submission']`` says
``one call, token ids, per-request lengths``). Where that hook is missing (another MII version),
requests are grouped by ``max_tokens``, one call per group, prompts as text (``grouped by max_tokens``).

Generated token ids are not returned, so the output count is the engine's ``generated_length``
(``Completion.reported_tokens``), checked against ``max_tokens`` like any other; ``prompt_length``
comes back and is compared with ours (``prompt_length_mismatches``).
Weights: the random-weight folder of the ``model_weights`` rule (MII loads weights from files).
"""

from __future__ import annotations

import gc
from collections import defaultdict
from typing import Any, Sequence

from inference_eval.backends.base import Backend, BackendUnavailable, BackendUnsupported
from inference_eval.requests import Completion, Request

# DeepSpeed's own refusal of a model configuration its kernels cannot run (0.19.x: "Inference V2 cannot
# serve rope_type='linear' ...", raised as a ValueError while the engine is built). The same model and
# library versions give it again on any machine, so the row is `unsupported` (the paper's '-' cell), not
# `failed` (which a second run might change).
CANNOT_SERVE_MARKER = "cannot serve"

NOT_INSTALLED = ("deepspeed-mii is not installed: it needs CUDA kernels (deepspeed-kernels), no CPU build "
                 "(pip install deepspeed-mii on a Linux machine with an NVIDIA GPU, compute capability >= 8.0)")


class MiiBackend(Backend):
    name = "mii"

    def __init__(self, cfg: dict, files):
        super().__init__(cfg, files)
        self._pipe = None
        self._tokenizer = None
        self.stats: dict[str, Any] = {"output_count": "Response.generated_length (no token ids returned)"}

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
        try:
            self._pipe = mii.pipeline(**kwargs)
        except ValueError as exc:
            if CANNOT_SERVE_MARKER in str(exc):
                raise BackendUnsupported(f"DeepSpeed refuses this model configuration: {exc}") from exc
            raise
        self.stats["pipeline_kwargs"] = kwargs

    def prompt_text(self, r: Request) -> str:
        """The request as the text MII will tokenize: the dataset's text, or its ids decoded."""
        if r.text:
            return r.text
        return self._tokenizer.decode(list(r.prompt_token_ids), skip_special_tokens=True)

    @staticmethod
    def can_submit_ids(pipe: Any) -> bool:
        return all(callable(getattr(pipe, name, None)) for name in ("_put_request", "make_request")) and \
            hasattr(pipe, "request_queue") and hasattr(pipe, "result_queues")

    def _call_with_ids(self, requests: Sequence[Request]) -> list:
        """One pipeline call for all requests, each as its token ids with its own max_new_tokens."""
        import queue

        import torch

        pipe = self._pipe

        def put_request(uid: int, _text: str, kwargs: dict) -> None:
            # MIIPipeline._put_request (0.3.x) with the ids given instead of tokenizing a text
            r = requests[uid]
            kwargs.update(self.generate_kwargs(r.max_tokens))
            pipe.result_queues[pipe.tid] = queue.Queue()
            ids = torch.tensor(r.prompt_token_ids, dtype=torch.long)
            pipe.request_queue.put(pipe.make_request(pipe.tid, uid, ids, kwargs))

        pipe._put_request = put_request
        try:
            return pipe([""] * len(requests), **self.generate_kwargs(max(r.max_tokens for r in requests)))
        finally:
            del pipe._put_request  # back to the class's method

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self._pipe is None:
            raise RuntimeError("MiiBackend.generate called before load()")
        if self.can_submit_ids(self._pipe):
            calls = [(list(requests), self._call_with_ids(requests))]
            self.stats["submission"] = "one call, token ids, per-request lengths"
        else:
            groups: dict[int, list[Request]] = defaultdict(list)
            for r in requests:
                groups[r.max_tokens].append(r)
            calls = [(group, self._pipe([self.prompt_text(r) for r in group], **self.generate_kwargs(n)))
                     for n, group in sorted(groups.items())]
            self.stats["submission"] = f"grouped by max_tokens: {len(groups)} calls, text prompts"
        by_id: dict[str, Completion] = {}
        prompt_mismatches = 0
        for group, responses in calls:
            if len(responses) != len(group):
                raise RuntimeError(f"mii.pipeline returned {len(responses)} responses for {len(group)} prompts")
            for r, resp in zip(group, responses):
                engine_prompt = int(resp.prompt_length)
                prompt_mismatches += engine_prompt != r.prompt_len
                by_id[r.id] = Completion(id=r.id, requested_tokens=r.max_tokens, prompt_tokens=engine_prompt,
                                         reported_tokens=int(resp.generated_length))
        self.stats.update(calls=len(calls), prompt_length_mismatches=prompt_mismatches)
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
