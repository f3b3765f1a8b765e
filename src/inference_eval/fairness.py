"""Fairness: the engine settings that change what is measured, stated, recorded and compared.

Three parts:

1. **Engine settings.** ``requested_settings(cfg, scenario)`` says, per library and in one vocabulary,
   how each setting that biases a comparison is configured: prefix (prompt) caching, chunked prefill,
   CUDA graphs, the KV-cache dtype, batching, sampling, how prompts reach the engine and how lengths
   are forced. The fair defaults live in ``conf/library/<name>.yaml`` (``prefix_caching: false``
   everywhere it exists); backends and server launchers apply them. Where the engine can tell,
   what it really ran with is read back (``resolved``: vLLM's engine config in batch runs, its start-up
   log line in serving) and overrides what was asked for.
2. **The manifest.** ``manifest(...)`` bundles those settings with what identifies the workload: the
   requests' sha256 (ids, prompt token ids and lengths, in order), the row limit and output cap, the
   exact-length result, model and hardware. Every batch record and serving row carries one.
3. **The gate.** ``gate(rows)`` puts rows side by side only when their manifests agree on
   ``COMPARABILITY_KEYS``: each row gets ``comparable`` (bool) and ``comparability_reason`` (the keys
   that differ, with the values). A table of several models is gated per model (``gate_groups``): rows
   of different models sit in different groups of the table, not side by side, so they are never
   "incomparable" with each other; inside a group the ``model`` key still catches a record whose
   manifest names another model than the row. Rows without a manifest (records made before this module existed)
   are not comparable, with that reason. Rows that produced no result (failed, not installed) get
   ``comparable = None``: there is nothing to compare, and their status already says why.

Prefix caching is judged on what was measured where a hit rate exists (serving: vLLM's ``/metrics``
counters, llama.cpp's server log): a row whose prompts were served from cache above
``PREFIX_HIT_TOLERANCE`` is not comparable with rows that computed theirs, whatever the setting said.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

MANIFEST_VERSION = 1
# The keys two rows must agree on to be put side by side.
COMPARABILITY_KEYS = ("hardware", "model", "dataset", "requests_sha256", "row_limit", "max_tokens_cap",
                      "exact", "prefix_caching")
# Above this share of prompt tokens served from a cache, a row's prompts were (partly) not computed.
# Not zero: llama-cpp-python's server keeps the previous request's BOS token, which every prompt shares
# (1 token of a 28-token s2s prompt is 3.6 %); vLLM's cache hits whole 16-token blocks only. The
# confound this gate exists for was 34 % (s2s) to 99 % (l2s) of prompt tokens.
PREFIX_HIT_TOLERANCE = 0.05
NO_MANIFEST = "no fairness manifest (recorded before the tool checked engine settings)"


# -- the settings a library runs with ------------------------------------------------------------
def _lib(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    return cfg.get("library") or {}


def _gpu(cfg: Mapping[str, Any]) -> bool:
    return (cfg.get("hardware") or {}).get("kind") == "gpu"


def prefix_caching_setting(cfg: Mapping[str, Any]) -> bool:
    """``library.prefix_caching`` as a bool (default off: a benchmark that re-sends prompts must compute
    them); anything but a bool or null is a config error naming the key."""
    value = _lib(cfg).get("prefix_caching", False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"library.prefix_caching must be true or false, got {value!r}")
    return value


def _vllm(cfg, scenario):
    lib = _lib(cfg)
    eager = bool(lib.get("enforce_eager", False))
    chunked = lib.get("chunked_prefill")
    return {
        "prefix_caching": prefix_caching_setting(cfg),
        "chunked_prefill": "engine default" if chunked is None else bool(chunked),
        "cuda_graphs": (not eager) if _gpu(cfg) else "n/a (CPU)",
        "kv_cache_dtype": str(lib.get("kv_cache_dtype") or "auto"),
        "batching": f"continuous (vLLM scheduler, max_num_seqs {lib.get('max_num_seqs') or 256})",
        "sampling": "greedy (temperature 0)",
        "prompt_route": "token ids",
        "length_forcing": "ignore_eos, max_tokens" + (" = min_tokens" if scenario == "serving" else ""),
    }


def _transformers(cfg, scenario):
    lib = _lib(cfg)
    dtype = str((cfg.get("model") or {}).get("dtype") or "float32")
    if scenario == "serving":
        batching = "continuous (transformers serve)" if lib.get("continuous_batching") else "one request at a time (transformers serve)"
    elif lib.get("continuous_batching"):
        batching = "continuous (Transformers' continuous-batching manager)"
    else:
        size = lib.get("batch_size")
        size = ("auto" if _gpu(cfg) else 8) if size is None else size
        batching = f"static batches of {size}"
    return {
        "prefix_caching": False,  # nothing is kept across requests
        "chunked_prefill": "n/a",
        "cuda_graphs": False,     # eager PyTorch
        "kv_cache_dtype": dtype,
        "batching": batching,
        "sampling": "greedy (do_sample false)",
        "prompt_route": "text, re-tokenized by the server" if scenario == "serving" else "token ids",
        "length_forcing": "min_new_tokens = max_new_tokens" + (", eos_token_id -1" if lib.get("continuous_batching") else ""),
    }


def _llamacpp(cfg, scenario):
    serving = scenario == "serving"
    return {
        # Batch: reset() before every request. Serving: llama-cpp-python's server keeps the previous
        # request's tokens and reuses their common prefix (no switch turns it off); its log's
        # "prefix-match hit" lines measure that reuse per rate.
        "prefix_caching": "previous prompt's prefix (not switchable)" if serving else False,
        "chunked_prefill": "n/a",
        "cuda_graphs": "engine default (ggml CUDA graphs)" if _gpu(cfg) else "n/a (CPU)",
        "kv_cache_dtype": "f16",
        "batching": "one request at a time",
        "sampling": "greedy (top_k 1, temperature 0)",
        "prompt_route": "text, re-tokenized by the server" if serving else "token ids",
        "length_forcing": "min_tokens = max_tokens" if serving else "token loop stopped at max_tokens (no EOS check)",
    }


def _mii(cfg, scenario):
    serving = scenario == "serving"
    return {
        "prefix_caching": False,  # DeepSpeed-FastGen (MII 0.3.x) has no prefix cache
        "chunked_prefill": "Dynamic SplitFuse (always on)",
        "cuda_graphs": "engine default",
        "kv_cache_dtype": str((cfg.get("model") or {}).get("dtype") or "auto"),
        "batching": "continuous (FastGen ragged batching)",
        "sampling": ("sampled from the plain softmax (the server forces do_sample; temperature null, top_p 1.0)"
                     if serving else "greedy (do_sample false)"),
        "prompt_route": "text, re-tokenized by the server" if serving else "token ids (pipeline request hook)",
        "length_forcing": "min_tokens far above max_tokens" if serving else "ignore_eos, min_new_tokens = max_new_tokens",
    }


def _trtllm(cfg, scenario):
    lib = _lib(cfg)
    return {
        "prefix_caching": prefix_caching_setting(cfg),  # KvCacheConfig.enable_block_reuse
        "chunked_prefill": "engine default",
        "cuda_graphs": "engine default",
        "kv_cache_dtype": "engine build dtype",
        "batching": f"in-flight (max_batch_size {lib.get('max_batch_size') or 256})",
        "sampling": "greedy (top_k 1)" if scenario == "batch" else "greedy (temperature 0)",
        "prompt_route": "token ids",
        "length_forcing": "ignore_eos, max_tokens" + (" = min_tokens" if scenario == "serving" else ""),
    }


def _loopback(cfg, scenario):
    return {"prefix_caching": False, "chunked_prefill": "n/a", "cuda_graphs": "n/a", "kv_cache_dtype": "n/a",
            "batching": "n/a (test server)", "sampling": "n/a", "prompt_route": "token ids",
            "length_forcing": "max_tokens"}


SETTINGS = {"vllm": _vllm, "transformers": _transformers, "llamacpp": _llamacpp, "mii": _mii, "trtllm": _trtllm,
            "loopback": _loopback}
SETTING_KEYS = ("prefix_caching", "chunked_prefill", "cuda_graphs", "kv_cache_dtype", "batching", "sampling",
                "prompt_route", "length_forcing")


def requested_settings(cfg: Mapping[str, Any], scenario: str) -> dict[str, Any]:
    """The engine settings of ``cfg``'s library as configured, in the shared vocabulary."""
    name = _lib(cfg).get("name", "")
    make = SETTINGS.get(name)
    if make is None:
        return {key: "unknown (no fairness entry for this library)" for key in SETTING_KEYS}
    return make(cfg, scenario)


# -- what the engine says it ran with -----------------------------------------------------------
_VLLM_LOG_KEYS = {"enable_prefix_caching": "prefix_caching", "enable_chunked_prefill": "chunked_prefill",
                  "enforce_eager": "enforce_eager", "kv_cache_dtype": "kv_cache_dtype"}
_VLLM_LOG_KEY = re.compile(r"\b(" + "|".join(_VLLM_LOG_KEYS) + r")=([^,\s)]+)")
_CUDAGRAPH_MODE = re.compile(r"cudagraph_mode['\"]?\s*[:=]\s*<?(?:CUDAGraphMode\.)?([A-Z_]+)")


def _literal(text: str) -> Any:
    return {"True": True, "False": False, "None": None}.get(text, text)


def vllm_settings_from_log(text: str) -> dict[str, Any]:
    """vLLM's resolved settings from its ``Initializing a V1 LLM engine ... with config:`` log line
    (the last one in ``text``); ``{}`` when the line is not there."""
    lines = [ln for ln in text.splitlines() if "LLM engine" in ln and "with config:" in ln]
    if not lines:
        return {}
    line = lines[-1]
    found = {_VLLM_LOG_KEYS[k]: _literal(v) for k, v in _VLLM_LOG_KEY.findall(line)}
    mode = _CUDAGRAPH_MODE.search(line)
    out: dict[str, Any] = {}
    if "prefix_caching" in found:
        out["prefix_caching"] = bool(found["prefix_caching"])
    if "chunked_prefill" in found:
        out["chunked_prefill"] = bool(found["chunked_prefill"])
    if "kv_cache_dtype" in found:
        out["kv_cache_dtype"] = str(found["kv_cache_dtype"])
    if "enforce_eager" in found:
        eager = bool(found["enforce_eager"])
        out["cuda_graphs"] = False if eager else (mode.group(1) if mode else True)
        if mode and mode.group(1) == "NONE":
            out["cuda_graphs"] = False
    return out


def vllm_settings_from_engine(llm: Any) -> dict[str, Any]:
    """The same settings read from a loaded ``vllm.LLM``'s engine config; ``{}`` where it has none."""
    config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    if config is None:
        return {}
    out: dict[str, Any] = {}
    cache, sched = getattr(config, "cache_config", None), getattr(config, "scheduler_config", None)
    model, comp = getattr(config, "model_config", None), getattr(config, "compilation_config", None)
    if cache is not None:
        out["prefix_caching"] = bool(getattr(cache, "enable_prefix_caching", False))
        out["kv_cache_dtype"] = str(getattr(cache, "cache_dtype", "auto"))
    if sched is not None:
        chunked = getattr(sched, "enable_chunked_prefill", None)
        if chunked is None:
            chunked = getattr(sched, "chunked_prefill_enabled", None)
        if chunked is not None:
            out["chunked_prefill"] = bool(chunked)
        if getattr(sched, "max_num_seqs", None):
            out["max_num_seqs"] = int(sched.max_num_seqs)
    if model is not None:
        eager = bool(getattr(model, "enforce_eager", False))
        mode = getattr(comp, "cudagraph_mode", None) if comp is not None else None
        mode_name = getattr(mode, "name", None)
        out["cuda_graphs"] = False if eager or mode_name == "NONE" else (mode_name or True)
    return out


# -- identity of the workload -------------------------------------------------------------------
def requests_sha256(requests: Iterable[Any]) -> str:
    """sha256 over the requests in order: id, prompt token ids and max_tokens of each."""
    digest = hashlib.sha256()
    for r in requests:
        digest.update(json.dumps([r.id, list(r.prompt_token_ids), int(r.max_tokens)]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def manifest(cfg: Mapping[str, Any], scenario: str, requests: Sequence[Any], *, exact: bool | None,
             n_exact: int | None = None, resolved: Mapping[str, Any] | None = None,
             resolved_source: str = "", dataset_manifest: Mapping[str, Any] | None = None,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fairness manifest of one batch record or serving sweep (see the module docstring)."""
    requested = requested_settings(cfg, scenario)
    resolved = dict(resolved or {})
    effective = dict(requested)
    effective.update({k: v for k, v in resolved.items() if k in SETTING_KEYS})
    dataset = cfg.get("dataset") or {}
    dm = dataset_manifest or {}
    out = {
        "version": MANIFEST_VERSION,
        "scenario": scenario,
        "library": _lib(cfg).get("name"),
        "model": (cfg.get("model") or {}).get("name"),
        "hardware": (cfg.get("hardware") or {}).get("name"),
        "dataset": dataset.get("task") or dataset.get("name"),
        "dataset_rows_sha256": dm.get("rows_sha256"),
        "requests_sha256": requests_sha256(requests),
        "n_requests": len(requests),
        "row_limit": dataset.get("limit"),
        "max_tokens_cap": dataset.get("max_tokens_cap"),
        "exact": exact,
        "n_exact": n_exact,
        "settings": effective,
        "requested": requested,
        "resolved": resolved,
        "resolved_source": resolved_source or ("none: the engine reports nothing; the settings are what was asked for"
                                               if not resolved else ""),
    }
    out.update(extra or {})
    return out


# -- the gate -----------------------------------------------------------------------------------
def _prefix_state(m: Mapping[str, Any]) -> str:
    """'off' or 'on' for the gate: a measured hit rate decides where there is one, else the setting."""
    hit = m.get("prefix_cache_hit_rate")
    if isinstance(hit, (int, float)) and not (isinstance(hit, float) and math.isnan(hit)):
        return "on" if hit > PREFIX_HIT_TOLERANCE else "off"
    setting = (m.get("settings") or {}).get("prefix_caching")
    return "off" if setting is False else "on"


def comparison_values(m: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``COMPARABILITY_KEYS`` for one manifest."""
    values = {k: m.get(k) for k in COMPARABILITY_KEYS if k != "prefix_caching"}
    values["prefix_caching"] = _prefix_state(m)
    return values


def _fmt(v: Any) -> str:
    return "null" if v is None else (v[:12] if isinstance(v, str) and len(v) == 64 else str(v))


def gate(manifests: Sequence[Mapping[str, Any] | None]) -> list[tuple[bool | None, str]]:
    """``(comparable, reason)`` per row. ``None`` marks a row with no result (nothing to compare).

    The reference for each key is the fair value where one exists (lengths exact, prefix caching off),
    else the value most rows share (ties: the first row's). A row that differs on any key is not
    comparable; its reason names each differing key with its value and the reference."""
    present = [m for m in manifests if m]
    rows = [comparison_values(m) for m in present]
    reference: dict[str, Any] = {}
    for key in COMPARABILITY_KEYS:
        if key == "exact":
            reference[key] = True
        elif key == "prefix_caching":
            reference[key] = "off"
        else:
            counts = Counter(json.dumps(r[key], sort_keys=True, default=str) for r in rows)
            if counts:
                top = max(counts.values())
                first = next(json.dumps(r[key], sort_keys=True, default=str) for r in rows
                             if counts[json.dumps(r[key], sort_keys=True, default=str)] == top)
                reference[key] = json.loads(first)
    out: list[tuple[bool | None, str]] = []
    for m in manifests:
        if m is None:
            out.append((False, NO_MANIFEST))
            continue
        if m.get("no_result"):
            out.append((None, "no result"))
            continue
        values = comparison_values(m)
        differs = [f"{k}={_fmt(values[k])} (others {_fmt(reference[k])})" for k in COMPARABILITY_KEYS
                   if k in reference and values[k] != reference[k]]
        out.append((not differs, "; ".join(differs)))
    return out


def gate_groups(manifests: Sequence[Mapping[str, Any] | None],
                groups: Sequence[Any]) -> list[tuple[bool | None, str]]:
    """``gate`` run separately on each group of rows (``groups[i]`` is row i's group, e.g. its model),
    answers in the rows' order: a row is compared only with the rows of its own group."""
    if len(manifests) != len(groups):
        raise ValueError(f"gate_groups: {len(manifests)} manifests but {len(groups)} group labels")
    out: list[tuple[bool | None, str] | None] = [None] * len(manifests)
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(json.dumps(_clean(group), sort_keys=True, default=str), []).append(i)
    for indices in members.values():
        for i, flag in zip(indices, gate([manifests[i] for i in indices])):
            out[i] = flag
    return out  # type: ignore[return-value]


def table_note(flags: Sequence[tuple[bool | None, str]]) -> str:
    """One line for a whole table: whether its rows can be read side by side."""
    bad = [f for f in flags if f[0] is False]
    if not bad:
        return "all rows with a result are comparable"
    return f"{len(bad)} of {len(flags)} rows are NOT comparable with the rest (see comparability_reason)"


def _clean(v: Any) -> Any:
    """A CSV cell as the gate compares it: NaN -> None, 64.0 -> 64, 'True' -> True."""
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if v.is_integer():
            return int(v)
    if isinstance(v, str) and v in ("True", "False"):
        return v == "True"
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalars
        return _clean(v.item())
    return v


def manifest_from_row(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """A serving CSV row's manifest columns as the gate reads them (None: a row made before them)."""
    if row.get("status") not in ("ok", "invalid"):
        return {"no_result": True}
    if _clean(row.get("requests_sha256")) is None:
        return None
    m = {k: _clean(row.get(k)) for k in COMPARABILITY_KEYS if k != "prefix_caching"}
    m["settings"] = {"prefix_caching": _clean(row.get("prefix_caching"))}
    m["prefix_cache_hit_rate"] = _clean(row.get("prefix_cache_hit_rate"))
    return m


def gate_frame(frame):
    """``frame`` (serving rows of one dataset, every library) with ``comparable`` and
    ``comparability_reason`` columns from the gate, per model where the frame has a ``model`` column."""
    frame = frame.copy()
    if frame.empty:
        frame["comparable"], frame["comparability_reason"] = [], []
        return frame
    rows = frame.to_dict("records")
    groups = [r.get("model") for r in rows] if "model" in frame else [None] * len(rows)
    flags = gate_groups([manifest_from_row(r) for r in rows], groups)
    frame["comparable"] = [f[0] for f in flags]
    frame["comparability_reason"] = [f[1] for f in flags]
    return frame
