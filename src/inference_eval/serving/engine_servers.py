"""The engines' server launchers: what each server needs beyond the common OpenAI schema of
``serving.launcher.ServerSpec``: options made from the library's engine settings, request bodies that
differ, and where the server reports its prefix-cache reuse and settings. ``conf/library/<name>.yaml``
names each as its ``server.launcher`` (through ``serving.servers``, which re-exports them).

Request schemas (checked against each server's own request model):
- vLLM ``/v1/completions``: ``prompt`` may be token ids; ``ignore_eos``; ``return_token_ids`` streams
  the generated ids; ``stream_options.include_usage`` adds a usage chunk.
- llama-cpp-python (``python -m llama_cpp.server``): ``prompt`` is text only; ``min_tokens`` masks EOS
  until that many tokens exist (so ``min_tokens = max_tokens`` forces the length); chunks carry text
  only, no ids or usage, and ``finish_reason == "length"`` is set exactly when ``max_tokens`` tokens were
  generated, which is what certifies the count. ``--interrupt_requests False`` or a new request aborts
  the one streaming.
- ``transformers serve``: ``prompt`` is text only; ``generation_config`` (a JSON string) takes
  ``min_new_tokens``; the final chunk carries ``usage.completion_tokens`` (counted by the server's
  streamer from ids); no ``[DONE]``.
- DeepSpeed-MII (``python -m mii.entrypoints.openai_api_server``, which calls ``mii.serve``): text
  prompts, ``min_tokens``; text-only chunks, certified by ``finish_reason == "length"``.
- TensorRT-LLM (``trtllm-serve``): token-id prompts, ``ignore_eos``, ``min_tokens``,
  ``stream_options.include_usage``; its request model forbids unknown fields (a 400), so nothing
  vLLM-only (``return_token_ids``) is sent (docs/trtllm.md).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from inference_eval import libraries, tensor_parallel
from inference_eval.fairness import prefix_caching_setting
from inference_eval.models.context import context_length
from inference_eval.serving.launcher import PrefixCacheCounters, ServerSpec, engine_dir


def _prometheus_sum(text: str, name: str) -> float | None:
    """Sum of every sample of metric ``name`` (all label sets) in a Prometheus text exposition."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            try:
                total += float(line.rsplit(None, 1)[-1])
                seen = True
            except ValueError:
                continue
    return total if seen else None


def fetch_text(url: str, api_key: str | None, timeout_s: float = 10.0) -> str:
    import urllib.request

    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return resp.read().decode("utf-8", "replace")


# llama-cpp-python (Llama.generate, verbose) logs each reuse of the previous request's tokens.
_LLAMACPP_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit")


def _dtype(cfg: dict) -> str:
    return str(cfg["model"].get("dtype") or "auto")


def _is_cpu(cfg: dict) -> bool:
    return cfg["hardware"].get("kind") == "cpu" or cfg["hardware"].get("device") == "cpu"


class VllmServer(ServerSpec):
    library = "vllm"

    def extra_args(self, cfg, files):
        lib = cfg["library"]
        argv = ["--dtype", _dtype(cfg), "--max-num-seqs", str(lib.get("max_num_seqs") or 256),
                "--tensor-parallel-size", str(tensor_parallel.degree(cfg))]
        if not cfg["model"].get("checkpoint"):
            argv += ["--load-format", "dummy"]  # random weights: efficiency does not depend on values
        if lib.get("max_model_len"):
            argv += ["--max-model-len", str(lib["max_model_len"])]
        if lib.get("enforce_eager"):
            argv.append("--enforce-eager")
        # Settings that change what is measured (inference_eval.fairness): always explicit. The sweep
        # re-sends the same prompts at every rate, so a prefix cache would serve them from memory.
        argv.append("--enable-prefix-caching" if prefix_caching_setting(cfg) else "--no-enable-prefix-caching")
        if lib.get("chunked_prefill") is not None:
            argv.append("--enable-chunked-prefill" if lib["chunked_prefill"] else "--no-enable-chunked-prefill")
        if lib.get("kv_cache_dtype") and str(lib["kv_cache_dtype"]) != "auto":
            argv += ["--kv-cache-dtype", str(lib["kv_cache_dtype"])]
        if not _is_cpu(cfg):
            argv += ["--gpu-memory-utilization", str(lib.get("gpu_memory_utilization") or 0.9)]
        return argv

    def extra_env(self, cfg):
        if _is_cpu(cfg):
            return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        return {}

    def prefix_cache_counters(self, base_url, log_path, api_key):
        # vLLM v1's Prometheus counters (tokens): vllm:prefix_cache_queries / vllm:prefix_cache_hits
        try:
            text = fetch_text(base_url + "/metrics", api_key)
        except OSError:
            return None
        queried = _prometheus_sum(text, "vllm:prefix_cache_queries_total")
        hits = _prometheus_sum(text, "vllm:prefix_cache_hits_total")
        if hits is None or queried is None:
            return None
        return PrefixCacheCounters(hits, queried, "vLLM /metrics: vllm:prefix_cache_hits / vllm:prefix_cache_queries")

    def resolved_settings(self, log_text):
        from inference_eval.fairness import vllm_settings_from_log
        return vllm_settings_from_log(log_text)


class LlamaCppServer(ServerSpec):
    library = "llamacpp"

    def extra_args(self, cfg, files):
        lib = cfg["library"]
        argv = ["--n_ctx", str(context_length(cfg)),
                "--n_gpu_layers", "0" if _is_cpu(cfg) else str(lib.get("n_gpu_layers", -1))]
        if not _is_cpu(cfg):
            argv += _llamacpp_split_args(cfg)
        if lib.get("n_threads"):
            argv += ["--n_threads", str(lib["n_threads"])]
        return argv

    def unsupported_reason(self, cfg):
        if _is_cpu(cfg):
            return None
        try:
            _llamacpp_split_args(cfg)
        except (ValueError, RuntimeError) as exc:  # a bad split_mode; split none at a degree above 1
            return str(exc)
        return None

    def body(self, request, model_name, prompt_text=None):
        # llama-cpp-python's min_tokens counts generated tokens only (MinTokensLogitsProcessor), so
        # min_tokens = max_tokens masks EOS until the last one.
        n = request.max_tokens
        return {"model": model_name, "prompt": prompt_text or "", "max_tokens": n, "min_tokens": n,
                "temperature": 0.0, "stream": True}

    def prefix_cache_counters(self, base_url, log_path, api_key):
        try:
            text = Path(log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        hits = sum(int(m) for m in _LLAMACPP_PREFIX_HIT.findall(text))
        return PrefixCacheCounters(float(hits), None, "server log: llama-cpp-python's 'prefix-match hit' lines")


def _llamacpp_split_args(cfg: dict) -> list[str]:
    """``--split_mode``, ``--main_gpu`` and ``--tensor_split`` as the batch backend sets them."""
    from inference_eval.backends.llamacpp_backend import split_settings

    split = split_settings(cfg["library"], tensor_parallel.degree(cfg))
    argv = ["--split_mode", str(split["split_mode"]), "--main_gpu", str(split["main_gpu"])]
    if split.get("tensor_split"):
        argv += ["--tensor_split", *[str(x) for x in split["tensor_split"]]]
    return argv


class TransformersServer(ServerSpec):
    library = "transformers"

    def unsupported_reason(self, cfg):
        t = tensor_parallel.degree(cfg)
        if t > 1:
            return (f"library.tensor_parallel = {t}: the harness launches `transformers serve` on one device and "
                    f"does not support tensor parallelism for it")
        return None

    def extra_args(self, cfg, files):
        lib = cfg["library"]
        argv = ["--device", "cpu" if _is_cpu(cfg) else "auto", "--dtype", _dtype(cfg)]
        if lib.get("attn_implementation"):
            argv += ["--attn-implementation", str(lib["attn_implementation"])]
        if lib.get("continuous_batching"):
            argv.append("--continuous-batching")
        self._continuous = bool(lib.get("continuous_batching"))
        return argv

    def body(self, request, model_name, prompt_text=None):
        n = request.max_tokens
        gen = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}
        if getattr(self, "_continuous", False):
            gen["eos_token_id"] = -1  # generate_batch ignores min_new_tokens
        return {"model": model_name, "prompt": prompt_text or "", "max_tokens": n, "stream": True,
                "generation_config": json.dumps(gen)}


MII_MIN_TOKENS = 1_000_000


class MiiServer(ServerSpec):
    library = "mii"

    def extra_args(self, cfg, files):
        lib = cfg["library"]
        argv = ["--tensor-parallel", str(tensor_parallel.degree(cfg))]
        if lib.get("max_length"):
            argv += ["--max-length", str(lib["max_length"])]
        return argv

    def body(self, request, model_name, prompt_text=None):
        # MII's server cannot pass ignore_eos and compares min_tokens with prompt + generated tokens,
        # so min_tokens = n does not force n; a min far above max_tokens does, and then
        # finish_reason "length" means exactly n ids (docs/mii.md). Its usage field
        # re-tokenizes text (and counts a BOS), so it is not used for the count.
        # The server hard-codes do_sample=True and rejects temperature 0 (its config wants > 0), so
        # greedy decoding cannot be asked for. A null temperature skips its
        # temperature processor (default 0.7); top_p 1.0 keeps the whole distribution (default 0.9; the
        # top-p processor runs either way). Each step then samples from the plain softmax.
        n = request.max_tokens
        return {"model": model_name, "prompt": prompt_text or "", "max_tokens": n, "min_tokens": MII_MIN_TOKENS,
                "temperature": None, "top_p": 1.0, "stream": True}


class TrtLlmServer(ServerSpec):
    library = "trtllm"

    def extra_args(self, cfg, files):
        from inference_eval.models.trtllm_engine import free_gpu_memory_fraction

        lib = cfg["library"]
        argv = ["--max_batch_size", str(lib.get("max_batch_size") or 256),
                "--max_num_tokens", str(lib.get("max_num_tokens") or 8192),
                "--tp_size", str(tensor_parallel.degree(cfg))]  # an engine's must match its build's
        if engine_dir(files.engine_record):
            argv += ["--backend", "tensorrt", "--tokenizer", str(files.hf_dir)]
        else:
            argv += ["--backend", "pytorch"]
        # KV-block reuse across requests (its prefix cache, on by default) as library.prefix_caching says.
        # trtllm-serve replaces its whole kv_cache_config with the file's, so the file also carries the
        # KV-cache memory share (else --free_gpu_memory_fraction would be dropped for KvCacheConfig's default).
        options = _trtllm_options_file(prefix_caching_setting(cfg), free_gpu_memory_fraction(lib))
        return argv + ["--extra_llm_api_options", str(options)]


def _trtllm_options_file(block_reuse: bool, memory_fraction: float) -> Path:
    """A YAML of LLM-API options for ``trtllm-serve --extra_llm_api_options`` (named by its content, so
    repeated launches with the same settings share one file and different settings never clash)."""
    import hashlib
    import tempfile

    text = (f"kv_cache_config:\n  enable_block_reuse: {'true' if block_reuse else 'false'}\n"
            f"  free_gpu_memory_fraction: {memory_fraction!r}\n")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"inference-eval-trtllm-options-{digest}.yaml"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: a concurrent launch never reads half a file
    return path


LOOPBACK = libraries.Server(command=("{python}", "-m", "inference_eval.serving.loopback_server", "--host", "{host}",
                                     "--port", "{port}"), api_key_env="LOOPBACK_API_KEY")


class LoopbackServer(ServerSpec):
    """The project's own minimal streaming server (``loopback_server``): for tests and benchmarks."""

    library = "loopback"

    def __init__(self, extra_args: tuple[str, ...] = ()):
        super().__init__(LOOPBACK)
        self._extra = tuple(extra_args)

    def extra_args(self, cfg, files):
        return list(self._extra)

    def body(self, request, model_name, prompt_text=None):
        n = request.max_tokens
        return {"model": model_name, "prompt": list(request.prompt_token_ids), "max_tokens": n, "ignore_eos": True,
                "stream": True, "return_token_ids": True, "stream_options": {"include_usage": True}}

