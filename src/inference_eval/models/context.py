"""How many tokens of context a run gives the model, where the library needs it set up front.

llama.cpp sizes its KV cache from ``n_ctx`` when the model is loaded; the batch backend
(``backends/llamacpp_backend.py``) and the server launcher (``serving/servers.py``) both read it here,
so a batch run and a serving sweep of the same job get the same context.
"""

from __future__ import annotations

DEFAULT_CONTEXT = 4096  # Llama-2's context, for a model config that names none


def context_length(cfg: dict) -> int:
    """llama.cpp's context (``n_ctx``): ``library.n_ctx``, else the model's whole context, so that a 16k model
    gets 16k tokens without an override (the batch runs and the server agree on it)."""
    return int(cfg["library"].get("n_ctx") or cfg["model"].get("max_position_embeddings") or DEFAULT_CONTEXT)
