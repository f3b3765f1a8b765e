"""llama.cpp through llama-cpp-python on the GGUF of the ``gguf`` rule.

Scheduling: llama-cpp-python's ``Llama`` object runs one sequence at a time (its high-level API has
no batch of different prompts), so requests are processed sequentially, each from an empty KV cache
(``reset()``: no prefix reuse from the previous request). Lengths are forced by driving
``Llama.generate``'s token loop and stopping after exactly ``max_tokens`` tokens: that loop has no
EOS check of its own, so an EOS token is generated and fed back like any other (as with
``ignore_eos`` in the other libraries). Decoding is greedy.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from tqdm import tqdm

from inference_eval import tensor_parallel
from inference_eval.backends.base import Backend, BackendUnavailable, BackendUnsupported
from inference_eval.models.context import context_length
from inference_eval.requests import Completion, Request

# llama.h's enum llama_split_mode (llama_cpp.LLAMA_SPLIT_MODE_*): how a model spreads over GPUs. "row"
# splits each weight matrix's rows over the GPUs (llama.h: "use tensor parallelism if supported"),
# "layer" gives each GPU whole layers and their KV cache, "tensor" is llama.cpp's newer tensor split.
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2, "tensor": 3}
TP_SPLIT_MODE = "row"  # library.split_mode null at tensor_parallel > 1


def split_settings(lib: dict, degree: int) -> dict[str, Any]:
    """``split_mode``, ``main_gpu`` and ``tensor_split`` for a GPU run of ``degree`` GPUs (names as
    ``llama_cpp.Llama`` and ``python -m llama_cpp.server`` take them).

    Degree 1 uses GPU 0 alone (split_mode none: llama.cpp's own default, layer, would spread the model
    over every visible GPU); degree t splits it evenly over GPUs 0..t-1 (tensor_split t x 1.0: GPUs
    beyond t get no share) in ``library.split_mode`` (null: row).
    """
    name = lib.get("split_mode") or (TP_SPLIT_MODE if degree > 1 else "none")
    if name not in SPLIT_MODES:
        raise ValueError(f"library.split_mode must be one of {', '.join(SPLIT_MODES)} or null, got {name!r}")
    if degree > 1 and name == "none":
        raise BackendUnsupported(f"library.split_mode none keeps the model on one GPU; tensor_parallel = {degree} "
                                 f"needs layer, row or tensor")
    out: dict[str, Any] = {"split_mode": SPLIT_MODES[name], "main_gpu": 0}
    if degree > 1:
        out["tensor_split"] = [1.0] * degree
    return out


INSTALL_HINT = ("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' (CPU build from source; "
                "for CUDA set CMAKE_ARGS=-DGGML_CUDA=on)")


class LlamaCppBackend(Backend):
    name = "llamacpp"
    scheduling = "sequential: one request at a time, KV cache reset between requests"

    def __init__(self, cfg: dict, files):
        super().__init__(cfg, files)
        self._llm = None
        self._n_ctx = 0
        self.stats: dict[str, Any] = {"scheduling": self.scheduling, "prompt_format": "token ids"}

    @classmethod
    def check_available(cls) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"{INSTALL_HINT} ({exc})") from exc

    def llama_kwargs(self) -> dict[str, Any]:
        """Arguments for ``llama_cpp.Llama``, from ``cfg['library']`` and the hardware profile."""
        lib, hw = self.cfg["library"], self.cfg.get("hardware", {})
        if not self.files.gguf_path:
            raise BackendUnavailable("llama.cpp needs a GGUF file; the models rule `gguf` gave none")
        n_gpu_layers = int(lib.get("n_gpu_layers", -1)) if hw.get("kind") == "gpu" else 0
        threads = lib.get("n_threads") or max(1, len(os.sched_getaffinity(0)))
        n_ctx = context_length(self.cfg)
        kwargs = {
            "model_path": str(self.files.gguf_path), "n_ctx": n_ctx, "n_batch": min(n_ctx, int(lib.get("n_batch") or 512)),
            "n_gpu_layers": n_gpu_layers, "n_threads": int(threads), "n_threads_batch": int(threads),
            "seed": int(self.cfg.get("seed", 0)), "logits_all": False, "verbose": bool(lib.get("verbose", False)),
        }
        if hw.get("kind") == "gpu":
            kwargs.update(split_settings(lib, tensor_parallel.degree(self.cfg)))
        return kwargs

    def load(self) -> None:
        import llama_cpp

        kwargs = self.llama_kwargs()
        self._n_ctx = kwargs["n_ctx"]
        self._llm = llama_cpp.Llama(**kwargs)
        self.stats.update(n_ctx=kwargs["n_ctx"], n_gpu_layers=kwargs["n_gpu_layers"], n_threads=kwargs["n_threads"])
        if "split_mode" in kwargs:
            self.stats.update(split_mode=kwargs["split_mode"], tensor_split=kwargs.get("tensor_split"))

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self._llm is None:
            raise RuntimeError("LlamaCppBackend.generate called before load()")
        too_long = {r.id for r in requests if r.prompt_len + r.max_tokens > self._n_ctx}
        if too_long and len(too_long) == len(requests):
            r = requests[0]
            raise BackendUnsupported(
                f"every request exceeds n_ctx={self._n_ctx} (e.g. {r.id}: {r.prompt_len} prompt + {r.max_tokens} "
                f"output tokens); raise library.n_ctx")
        out = []
        for r in tqdm(requests, desc="llama.cpp", unit="req", leave=False, disable=len(requests) < 8):
            if r.id in too_long:
                out.append(Completion(id=r.id, requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len,
                                      error=f"needs {r.prompt_len + r.max_tokens} tokens of context > n_ctx={self._n_ctx}"))
                continue
            out.append(self._generate_one(r))
        return out

    def _generate_one(self, r: Request) -> Completion:
        llm = self._llm
        llm.reset()  # no KV reuse from the previous request: every request pays its own prefill
        ids: list[int] = []
        for token in llm.generate(list(r.prompt_token_ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                  repeat_penalty=1.0, reset=True):
            ids.append(int(token))
            if len(ids) >= r.max_tokens:
                break
        return Completion(id=r.id, output_token_ids=ids, requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len)

    def versions(self) -> dict[str, Any]:
        try:
            import llama_cpp
            return {"llama_cpp_python": llama_cpp.__version__}
        except ImportError:
            return {}

    def close(self) -> None:
        if self._llm is not None:
            close = getattr(self._llm, "close", None)
            if callable(close):
                close()
            self._llm = None
