"""Named ranges around each decoder-layer op, and the assignment of measured time to those ops.

Ranges are opened and closed by forward pre/post hooks on each decoder layer's submodules (and, where
an op is not a module, by wrapping the function that performs it). Every range is both a
``torch.profiler.record_function`` (read back from the profiler's event tree) and, on a CUDA device,
an NVTX push/pop range (read by Nsight Compute). A stage range (``prefill`` / ``decode``) encloses
the whole decoder stack's forward, so work outside any op range but inside the stage is reported as
``other``: embeddings, the final norm, rotary cos/sin tables, masks. Nothing is dropped silently.

Where the residual adds go (Transformers): ``LlamaDecoderLayer.forward`` does
``h = residual + attn_out`` and ``h = residual + mlp_out`` inline, outside any submodule. The first
add (after attention) feeds ``post_attention_layernorm``, so it is ranged as ``add_norm_mlp`` from
the attention block's post-hook to the norm's pre-hook. The second (after the MLP) is ranged as
``add_norm_attn`` from the MLP's post-hook to the layer's post-hook: it is the add that vLLM fuses
into the *next* layer's ``input_layernorm`` (``fused_add_rms_norm``), so both libraries count one add
and one norm per pair per layer. Likewise ``act_fn(G) * U``: the SiLU is the ``act_fn`` module and the
multiply runs between ``up_proj``'s post-hook and ``down_proj``'s pre-hook; both are ``act_mul``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from inference_eval.opnames import OPS, OTHER, STAGES

RANGE_PREFIX = "ie::"          # op ranges:    ie::qkv_proj
STAGE_PREFIX = "ie.stage::"    # stage ranges: ie.stage::prefill#3 (3 = repeat index)
# Kernels / CPU ops inside the attention range that write the KV cache (vLLM fuses the write into
# its attention layer: reshape_and_cache[_flash] on CUDA, the cache-write op of the CPU backend).
KV_CACHE_KERNEL = re.compile(r"reshape_and_cache|kv_cache_update|cache_write|write_to_kv_cache|concat_and_cache", re.I)


def op_range_name(op: str) -> str:
    return RANGE_PREFIX + op


def stage_range_name(stage: str, repeat: int) -> str:
    return f"{STAGE_PREFIX}{stage}#{repeat}"


class RangeMarker:
    """Opens and closes the named ranges; the hooks and wrappers below call it.

    ``nvtx``: also push NVTX ranges (CUDA only). ``nvtx_layers``: the decoder-layer indices whose op
    ranges get NVTX (Nsight Compute is restricted to one layer, since it replays every kernel it
    profiles). ``nvtx_name``: maps (stage, op) to the NVTX range name (Nsight Compute's filter).
    """

    def __init__(self, nvtx: bool = False, nvtx_layers: Iterable[int] | None = None,
                 nvtx_name: Callable[[str, str], str] | None = None):
        self.nvtx = bool(nvtx)
        self.nvtx_layers = None if nvtx_layers is None else set(nvtx_layers)
        self.nvtx_name = nvtx_name or (lambda stage, op: op)
        self.active = False       # ranges only while a measured stage runs
        self.stage: str | None = None
        self.repeat = 0
        self.layer: int | None = None
        self._stack: list[tuple[str, Any, bool]] = []
        self._stage_handle: Any = None
        self._pending_stages: list[str] = []
        self.stage_tokens: dict[str, int] = {}

    # -- stages ---------------------------------------------------------------------------------
    def expect_stages(self, stages: Iterable[str], repeat: int) -> None:
        """The next forwards of the decoder stack are these stages, in order (vLLM's engine steps)."""
        self._pending_stages = list(stages)
        self.repeat = repeat

    def begin_stage(self, n_tokens: int | None = None) -> None:
        if not self._pending_stages:
            return  # a forward we do not measure (warm-up inside the engine, a dummy run)
        self.stage = self._pending_stages.pop(0)
        self.stage_tokens[self.stage] = int(n_tokens) if n_tokens is not None else -1
        self._stage_handle = _record_function_enter(stage_range_name(self.stage, self.repeat))
        self.active = True

    def end_stage(self) -> None:
        if not self.active:
            return
        self.close_all()
        _record_function_exit(self._stage_handle)
        self._stage_handle = None
        self.active = False
        self.stage = None

    # -- op ranges ------------------------------------------------------------------------------
    def open(self, op: str, key: str) -> None:
        if not self.active:
            return
        handle = _record_function_enter(op_range_name(op))
        pushed = False
        if self.nvtx and (self.nvtx_layers is None or self.layer in self.nvtx_layers):
            import torch
            torch.cuda.nvtx.range_push(self.nvtx_name(self.stage or "", op))
            pushed = True
        self._stack.append((key, handle, pushed))

    def close(self, key: str) -> None:
        """Close the range opened with ``key`` if it is the innermost one open (else nothing)."""
        if self._stack and self._stack[-1][0] == key:
            _, handle, pushed = self._stack.pop()
            if pushed:
                import torch
                torch.cuda.nvtx.range_pop()
            _record_function_exit(handle)

    def close_all(self) -> None:
        while self._stack:
            self.close(self._stack[-1][0])

    @contextlib.contextmanager
    def span(self, op: str, key: str) -> Iterator[None]:
        self.open(op, key)
        try:
            yield
        finally:
            self.close(key)


def _record_function_enter(name: str):
    import torch
    return torch.ops.profiler._record_function_enter_new(name, None)


def _record_function_exit(handle) -> None:
    import torch
    if handle is not None:
        torch.ops.profiler._record_function_exit._RecordFunction(handle)


# -- installing ranges on a model ---------------------------------------------------------------

@dataclass
class Installed:
    """Hooks and patches on a model; ``remove()`` restores everything."""

    handles: list = field(default_factory=list)
    restores: list = field(default_factory=list)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for undo in reversed(self.restores):
            undo()
        self.handles.clear()
        self.restores.clear()


def _span_module(inst: Installed, marker: RangeMarker, module, op: str, key: str) -> None:
    inst.handles.append(module.register_forward_pre_hook(lambda m, a: marker.open(op, key)))
    inst.handles.append(module.register_forward_hook(lambda m, a, o: marker.close(key)))


def _gap(inst: Installed, marker: RangeMarker, after, before, op: str, key: str, before_is_post: bool = False):
    """Range ``op`` from ``after``'s post-hook to ``before``'s pre-hook (or post-hook)."""
    inst.handles.append(after.register_forward_hook(lambda m, a, o: marker.open(op, key)))
    if before_is_post:
        inst.handles.append(before.register_forward_hook(lambda m, a, o: marker.close(key)))
    else:
        inst.handles.append(before.register_forward_pre_hook(lambda m, a: marker.close(key)))


def _layer_index_hooks(inst: Installed, marker: RangeMarker, layers) -> None:
    for idx, layer in enumerate(layers):
        inst.handles.append(layer.register_forward_pre_hook(functools.partial(_set_layer, marker, idx)))


def _set_layer(marker: RangeMarker, idx: int, module, args) -> None:
    marker.layer = idx


def _stage_hooks(inst: Installed, marker: RangeMarker, stack_module) -> None:
    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        marker.begin_stage(ids.numel() if hasattr(ids, "numel") else None)

    inst.handles.append(stack_module.register_forward_pre_hook(pre, with_kwargs=True))
    inst.handles.append(stack_module.register_forward_hook(lambda m, a, o: marker.end_stage()))


def _patch_attr(inst: Installed, owner, name: str, new) -> None:
    old = getattr(owner, name)
    setattr(owner, name, new)
    inst.restores.append(lambda: setattr(owner, name, old))


def _ranged(fn: Callable, marker: RangeMarker, op: str, key: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with marker.span(op, key):
            return fn(*args, **kwargs)
    wrapper.__wrapped_by_ie__ = True  # type: ignore[attr-defined]
    return wrapper


def install_transformers(model, marker: RangeMarker) -> Installed:
    """Ranges on a transformers 5.x Llama-family ``*ForCausalLM`` (eager or SDPA attention)."""
    inst = Installed()
    stack = model.model
    layers = list(stack.layers)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layers to range")
    _stage_hooks(inst, marker, stack)
    _layer_index_hooks(inst, marker, layers)
    seen: set[int] = set()
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        _span_module(inst, marker, layer.input_layernorm, "add_norm_attn", "norm_in")
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            _span_module(inst, marker, proj, "qkv_proj", "qkv")
        _span_module(inst, marker, attn.o_proj, "o_proj", "o")
        _gap(inst, marker, attn, layer.post_attention_layernorm, "add_norm_mlp", "add_attn")
        _span_module(inst, marker, layer.post_attention_layernorm, "add_norm_mlp", "norm_post")
        _span_module(inst, marker, mlp.gate_proj, "gate_up_proj", "gate")
        _span_module(inst, marker, mlp.up_proj, "gate_up_proj", "up")
        if id(mlp.act_fn) not in seen:  # an activation module may be shared between layers
            seen.add(id(mlp.act_fn))
            _span_module(inst, marker, mlp.act_fn, "act_mul", "act")
        _gap(inst, marker, mlp.up_proj, mlp.down_proj, "act_mul", "mul")
        _span_module(inst, marker, mlp.down_proj, "down_proj", "down")
        _gap(inst, marker, mlp, layer, "add_norm_attn", "add_mlp", before_is_post=True)

    # RoPE is applied inside the attention forward by a module-level function.
    modeling = sys.modules[type(layers[0].self_attn).__module__]
    if not hasattr(modeling, "apply_rotary_pos_emb"):
        raise ValueError(f"{modeling.__name__} has no apply_rotary_pos_emb to range as 'rope'")
    _patch_attr(inst, modeling, "apply_rotary_pos_emb",
                _ranged(modeling.apply_rotary_pos_emb, marker, "rope", "rope"))

    # The attention core is whatever the attention interface hands the layer (eager or sdpa).
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    original_get = ALL_ATTENTION_FUNCTIONS.get_interface

    def get_interface(impl, default):
        return _ranged(original_get(impl, default), marker, "attention", "attn")

    ALL_ATTENTION_FUNCTIONS.get_interface = get_interface  # instance attribute shadows the method
    inst.restores.append(lambda: vars(ALL_ATTENTION_FUNCTIONS).pop("get_interface", None))
    return inst


def range_cache_updates(cache, marker: RangeMarker):
    """Range a transformers ``Cache`` object's ``update`` (the KV-cache write) as ``kv_cache``."""
    cache.update = _ranged(cache.update, marker, "kv_cache", "kv")
    return cache


VLLM_MODULES = (
    ("input_layernorm", "add_norm_attn"),
    ("self_attn.qkv_proj", "qkv_proj"),
    ("self_attn.rotary_emb", "rope"),
    ("self_attn.attn", "attention"),
    ("self_attn.o_proj", "o_proj"),
    ("post_attention_layernorm", "add_norm_mlp"),
    ("mlp.gate_up_proj", "gate_up_proj"),
    ("mlp.act_fn", "act_mul"),
    ("mlp.down_proj", "down_proj"),
)


def install_vllm(model, marker: RangeMarker) -> Installed:
    """Ranges on vLLM's ``LlamaForCausalLM`` (eager mode; the KV-cache write is split off the
    attention range by kernel name, since vLLM performs it inside its attention layer)."""
    inst = Installed()
    layers = [m for m in model.model.layers if hasattr(m, "self_attn")]  # pipeline-parallel placeholders have none
    if not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layers to range")
    # The stage hooks go on the top model: vLLM's @support_torch_compile replaces the decoder stack's
    # __call__ (hooks there never fire), and its forward leaves the LM head to compute_logits.
    _stage_hooks(inst, marker, model)
    _layer_index_hooks(inst, marker, layers)
    seen: set[int] = set()
    for layer in layers:
        for path, op in VLLM_MODULES:
            module = layer.get_submodule(path)
            if id(module) in seen:
                continue
            seen.add(id(module))
            _span_module(inst, marker, module, op, path)
    return inst


# -- reading the profile back --------------------------------------------------------------------

@dataclass
class Attribution:
    """Time per (stage, repeat, op) in seconds, with how it was read."""

    times: dict = field(default_factory=lambda: defaultdict(float))  # (stage, repeat, op) -> s
    source: str = "cpu_self_time"  # or "device_kernels"

    def per_stage(self, stage: str) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = defaultdict(lambda: {op: 0.0 for op in (*OPS, OTHER)})
        for (st, rep, op), t in self.times.items():
            if st == stage:
                out[rep][op] += t
        return dict(out)


def _enclosing(evt) -> tuple[str | None, str | None, int | None]:
    """(op, stage, repeat) of the innermost op range and the stage range above an event.

    Inside the attention range, an event that is (or runs under) a KV-cache write is ``kv_cache``.
    """
    op = None
    cache_write = bool(KV_CACHE_KERNEL.search(evt.name or ""))
    node = evt.cpu_parent
    while node is not None:
        name = node.name
        if op is None and name.startswith(RANGE_PREFIX):
            op = name[len(RANGE_PREFIX):]
            if op == "attention" and cache_write:
                op = "kv_cache"
        elif name.startswith(STAGE_PREFIX):
            stage, _, rep = name[len(STAGE_PREFIX):].partition("#")
            return op, stage, int(rep or 0)
        elif op is None and KV_CACHE_KERNEL.search(name):
            cache_write = True
        node = node.cpu_parent
    return op, None, None


def _is_range(evt) -> bool:
    return evt.name.startswith(RANGE_PREFIX) or evt.name.startswith(STAGE_PREFIX)


def attribute_events(events, device: bool) -> Attribution:
    """Assign each profiled op's time to the op range that encloses it.

    ``device=False``: self CPU time of every CPU operator event (user annotations carry only the
    Python between ops and are not counted). ``device=True``: the duration of each device kernel,
    placed by the CPU op that launched it.
    """
    from torch.autograd import DeviceType

    out = Attribution(source="device_kernels" if device else "cpu_self_time")
    for evt in events:
        if evt.device_type != DeviceType.CPU:
            continue
        if _is_range(evt) or evt.is_user_annotation:
            continue
        if device:
            if not evt.kernels:
                continue
            op, stage, rep = _enclosing(evt)
            if stage is None:
                continue
            for k in evt.kernels:
                placed = _refine(op, k.name) or _refine(op, evt.name) or op or OTHER
                out.times[(stage, rep, _checked(placed))] += k.duration / 1e6
        else:
            t = evt.self_cpu_time_total
            if t <= 0:
                continue
            op, stage, rep = _enclosing(evt)
            if stage is None:
                continue
            placed = _refine(op, evt.name) or op or OTHER
            out.times[(stage, rep, _checked(placed))] += t / 1e6
    return out


def _refine(op: str | None, name: str) -> str | None:
    if op == "attention" and KV_CACHE_KERNEL.search(name or ""):
        return "kv_cache"
    return None


def _checked(op: str) -> str:
    if op not in OPS and op != OTHER:
        raise ValueError(f"range {op!r} is not an op of inference_eval.opnames.OPS")
    return op


def stages_seen(attribution: Attribution) -> set[str]:
    return {st for (st, _, _) in attribution.times}


__all__ = ["RangeMarker", "install_transformers", "install_vllm", "range_cache_updates", "attribute_events",
           "Attribution", "OPS", "OTHER", "STAGES", "op_range_name", "stage_range_name"]
