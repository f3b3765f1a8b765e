"""How large a static batch fits the device: the memory model behind ``library.batch_size: auto``.

Pure functions (no torch import): the Transformers backend measures free memory and runs the probe,
this module does the arithmetic and the back-off loop.

A static batch of ``b`` sequences, padded to its longest prompt ``P`` and generating its longest
output ``N`` (``min_new_tokens = max_new_tokens``), needs at its peak, in bytes (``e`` bytes per
element of the model's dtype; shapes from ``theory.ops.ModelShape``):

- ``weights``: ``ModelShape.weight_bytes()`` (or the loaded model's own bytes, when given);
- ``kv_cache``: ``b x (P + N) x ModelShape.kv_bytes_per_token()`` (the cache of the last step; it
  holds ``P + N - 1`` entries, one more is counted);
- ``kv_concat``: one layer's cache again: Transformers' ``DynamicCache`` grows by ``torch.cat`` of
  the old and the new tensors, so one layer's old and new K (or V) exist together for a moment;
- ``logits``: ``b x V x (e + 2 x 4)``: ``generate`` passes ``logits_to_keep=1`` (transformers 5.x:
  only the last position goes through the LM head, in the model's dtype), then copies it to float32
  (``next_token_logits``) and the logits processors write float32 scores of the same shape. The full
  ``b x P x V`` float32 prefill logits of older versions are not materialised any more;
- ``mlp``: the prefill's MLP intermediates, ``b x P x h' x e x MLP_ACTIVATION_FACTOR`` (gate, up and
  ``act(gate) * up`` live together);
- ``hidden``: the prefill's hidden-state tensors, ``b x P x h x e x HIDDEN_ACTIVATION_FACTOR``
  (residual, normed input, attention output, a projection);
- ``attention_scores`` (eager attention only): ``b x n x P x P x (2e + 4)``: eager attention writes
  the score matrix, adds the mask into a new one and takes the softmax in float32. SDPA kernels on
  a GPU keep no score matrix.

It may use ``memory_budget(weights, free) = weights + MEMORY_FRACTION x free`` bytes, where ``free`` is
the device's free memory after the model was loaded (``torch.cuda.mem_get_info``), or on CPU
``hardware.memory_gb`` minus the loaded model. Batches are cut from the requests in dataset order, so
for a candidate ``b`` the model takes the worst window of ``b`` consecutive requests (its largest
``P`` and its largest ``N``): every batch the run cuts is such a window, and the need is then
non-decreasing in ``b``, so "``b`` fits and ``b + 1`` does not" is well defined. The answer is capped
at the number of requests.

The model's answer is then checked on the device (``probe_batch_size``): one short ``generate`` at the
candidate size; on an out-of-memory error the size backs off to ``b * 3 // 4`` until one works.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from inference_eval.theory.ops import ModelShape

AUTO = "auto"
PAPER_BATCH_SIZE = 8          # the paper's hand setting; what ``null`` means on CPU hardware
MEMORY_FRACTION = 0.9         # of the free device memory the batch may use
MLP_ACTIVATION_FACTOR = 3     # gate, up, act(gate)*up: three b x P x h' tensors at once
HIDDEN_ACTIVATION_FACTOR = 4  # b x P x h tensors at once besides the MLP's
FLOAT32_BYTES = 4
BACK_OFF = (3, 4)             # on OOM: b -> b * 3 // 4
ALLOWED = "a positive integer, 'auto' or null (null: auto on GPU hardware, 8 on CPU)"


class BatchSizeError(ValueError):
    """A ``library.batch_size`` that is not a positive integer, ``auto`` or null."""


def resolve_setting(value: Any, hardware_kind: str | None) -> int | str:
    """``library.batch_size`` as the backend uses it: a positive int or ``AUTO``.

    ``None`` (the config default) is ``AUTO`` on GPU hardware (``hardware.kind == 'gpu'``) and
    ``PAPER_BATCH_SIZE`` elsewhere, so the CPU default run keeps the paper's static batches of 8."""
    if value is None:
        return AUTO if hardware_kind == "gpu" else PAPER_BATCH_SIZE
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BatchSizeError(f"library.batch_size must be {ALLOWED}, got {value!r}")
    return value


# -- the memory model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchMemory:
    """Bytes one static batch needs at its peak (see the module docstring for every term)."""

    batch_size: int
    prompt_len: int      # P: the batch's longest prompt (it is left-padded to it)
    new_tokens: int      # N: the batch's longest output (every row generates it)
    weights: int
    kv_cache: int
    kv_concat: int
    logits: int
    mlp: int
    hidden: int
    attention_scores: int

    @property
    def total(self) -> int:
        return (self.weights + self.kv_cache + self.kv_concat + self.logits + self.mlp + self.hidden
                + self.attention_scores)

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def batch_memory(shape: ModelShape, batch_size: int, prompt_len: int, new_tokens: int,
                 attn_implementation: str = "sdpa", weight_bytes: int | None = None) -> BatchMemory:
    """Peak bytes of a static batch of ``batch_size`` rows padded to ``prompt_len`` generating ``new_tokens``."""
    b, p, n = int(batch_size), int(prompt_len), int(new_tokens)
    if b < 1 or p < 1 or n < 1:
        raise ValueError(f"batch size, prompt length and new tokens must be >= 1, got b={b}, P={p}, N={n}")
    e = shape.bytes_per_element
    kv = b * (p + n) * shape.kv_bytes_per_token()
    scores = b * shape.heads * p * p * (2 * e + FLOAT32_BYTES) if attn_implementation == "eager" else 0
    return BatchMemory(
        batch_size=b, prompt_len=p, new_tokens=n,
        weights=int(shape.weight_bytes() if weight_bytes is None else weight_bytes),
        kv_cache=kv,
        kv_concat=kv // shape.layers,
        logits=b * shape.vocab * (e + 2 * FLOAT32_BYTES),
        mlp=b * p * shape.intermediate * e * MLP_ACTIVATION_FACTOR,
        hidden=b * p * shape.hidden * e * HIDDEN_ACTIVATION_FACTOR,
        attention_scores=scores)


def memory_budget(weight_bytes: int, free_bytes: int, fraction: float = MEMORY_FRACTION) -> int:
    """Bytes a batch may need in all, weights included: the loaded weights + ``fraction`` of what is free."""
    return int(weight_bytes + fraction * max(0, free_bytes))


def cpu_free_bytes(memory_gb: float, loaded_bytes: int) -> int:
    """Free memory on CPU hardware: ``hardware.memory_gb`` (decimal GB, as the theory module reads it)
    minus the loaded model."""
    return max(0, int(float(memory_gb) * 1e9) - int(loaded_bytes))


# -- windows of consecutive requests ----------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """``size`` consecutive requests from ``start``: their longest prompt and longest output."""

    start: int
    size: int
    prompt_len: int
    new_tokens: int


def sliding_max(values: Sequence[int], width: int) -> list[int]:
    """Maximum of every window of ``width`` consecutive values (monotone deque, O(n))."""
    if not 1 <= width <= len(values):
        raise ValueError(f"window width must be in 1..{len(values)}, got {width}")
    out: list[int] = []
    window: deque[int] = deque()  # indices, their values decreasing
    for i, v in enumerate(values):
        while window and values[window[-1]] <= v:
            window.pop()
        window.append(i)
        if window[0] <= i - width:
            window.popleft()
        if i >= width - 1:
            out.append(values[window[0]])
    return out


def worst_window(lengths: Sequence[tuple[int, int]], batch_size: int,
                 need: Callable[[int, int], float] | None = None) -> Window:
    """The window of ``batch_size`` consecutive requests (``(prompt_len, max_tokens)`` each, dataset
    order) that needs the most memory, by ``need(P, N)`` (non-decreasing in both); by default the
    largest ``P + N``. ``batch_size`` above the request count is cut to it (one batch of all)."""
    if not lengths:
        raise ValueError("no requests to size a batch for")
    b = min(int(batch_size), len(lengths))
    if b < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    need = need or (lambda p, n: p + n)
    prompts = sliding_max([int(p) for p, _ in lengths], b)
    outputs = sliding_max([int(n) for _, n in lengths], b)
    start = max(range(len(prompts)), key=lambda i: (need(prompts[i], outputs[i]), -i))
    return Window(start=start, size=b, prompt_len=prompts[start], new_tokens=outputs[start])


def window_memory(shape: ModelShape, lengths: Sequence[tuple[int, int]], batch_size: int,
                  attn_implementation: str = "sdpa", weight_bytes: int | None = None) -> tuple[Window, BatchMemory]:
    """The worst window for ``batch_size`` (capped at the request count) and what it needs."""
    b = min(int(batch_size), len(lengths))

    def need(p: int, n: int) -> int:
        return batch_memory(shape, b, p, n, attn_implementation, weight_bytes).total

    window = worst_window(lengths, b, need)
    return window, batch_memory(shape, b, window.prompt_len, window.new_tokens, attn_implementation, weight_bytes)


@dataclass(frozen=True)
class Fit:
    batch_size: int          # the largest that fits; 0 when not even one sequence does
    window: Window           # its worst window (at size 1 when nothing fits)
    memory: BatchMemory      # what that window needs
    budget_bytes: int


def fit_batch_size(shape: ModelShape, lengths: Sequence[tuple[int, int]], budget_bytes: int,
                   attn_implementation: str = "sdpa", weight_bytes: int | None = None) -> Fit:
    """The largest ``b <= len(lengths)`` whose worst window needs at most ``budget_bytes``.

    The need is non-decreasing in ``b`` (a window of ``b`` lies inside one of ``b + 1``, and every term
    grows with ``b``), so a binary search finds it."""
    if not lengths:
        raise ValueError("no requests to size a batch for")
    lo, hi = 0, len(lengths)  # lo fits (0: trivially), the answer is in lo..hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if window_memory(shape, lengths, mid, attn_implementation, weight_bytes)[1].total <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    window, memory = window_memory(shape, lengths, max(1, lo), attn_implementation, weight_bytes)
    return Fit(batch_size=lo, window=window, memory=memory, budget_bytes=int(budget_bytes))


# -- the probe's back-off -----------------------------------------------------------------------
def is_oom_error(exc: BaseException) -> bool:
    """``torch.cuda.OutOfMemoryError`` (matched by name: no torch import here) or a RuntimeError that
    says "out of memory" (older torch, cuBLAS/cuDNN workspaces)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def back_off(batch_size: int) -> int:
    """The next size to try after an OOM at ``batch_size``: ``b * 3 // 4``, at least 1."""
    return max(1, batch_size * BACK_OFF[0] // BACK_OFF[1])


def probe_batch_size(start: int, try_batch: Callable[[int], None], *,
                     on_oom: Callable[[], None] | None = None,
                     is_oom: Callable[[BaseException], bool] = is_oom_error,
                     tried: list[int] | None = None) -> tuple[int, list[int]]:
    """Try ``try_batch(b)`` from ``b = start``; on an OOM error call ``on_oom()`` (release the cache) and
    back off to ``b * 3 // 4`` (64 -> 48 -> 36 -> 27 -> ...). Returns the first size that ran and every
    size tried, in order (also appended to ``tried`` as it goes, so a caller keeps them when this
    raises). Any other error, or an OOM at size 1, is raised."""
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise ValueError(f"probe start size must be a positive integer, got {start!r}")
    tried = [] if tried is None else tried
    b = start
    while True:
        tried.append(b)
        try:
            try_batch(b)
            return b, tried
        except Exception as exc:
            if b == 1 or not is_oom(exc):
                raise
        # outside the except block: the exception and the frames holding the probe's tensors are gone
        if on_oom is not None:
            on_oom()
        b = back_off(b)
