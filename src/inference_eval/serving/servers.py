"""Server launchers: how to start a library's OpenAI-compatible server and how to ask it for exactly
``max_tokens`` tokens with EOS ignored.

The data of a launcher lives in the library's registry entry (``server:`` of ``conf/library/<name>.yaml``,
read as ``libraries.Server``): the command template, the health route, how the model path, the served
name, the port and the API key are passed, what must be installed, how prompts go and how the length is
certified. ``ServerSpec`` turns that into a command and requests; a library whose server speaks the common
OpenAI schema (token-id or text prompts, ``min_tokens``, ``ignore_eos``, a usage chunk) needs no code
here. The subclasses below hold only each server's real behaviour: options made from the library's engine
settings, request bodies that differ, and where the server reports its prefix-cache reuse and settings.

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

import copy
import importlib
import importlib.util
import json
import os
import re
import shutil
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from inference_eval import environments, libraries, tensor_parallel
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


def _executable(name: str, python: str) -> str:
    """A command of the template: the one beside the interpreter (its environment's), else from PATH."""
    beside = Path(python).with_name(name)
    return str(beside) if beside.exists() else name


def _command_missing(name: str, install: str, python: str = sys.executable) -> str | None:
    """A command is found beside the library's interpreter, or (for this interpreter) on PATH."""
    if Path(python).with_name(name).exists():
        return None
    if not environments.is_current(python) or shutil.which(name) is None:
        return f"the '{name}' command is not installed ({install})"
    return None


def _module_missing(module: str, install: str, python: str = sys.executable) -> str | None:
    """A module is looked up in the library's interpreter (another environment's: by asking it)."""
    if not environments.is_current(python):
        if not environments.module_available(python, module):
            return f"python module '{module}' is not installed in {python} ({install})"
        return None
    if importlib.util.find_spec(module) is None:
        return f"python module '{module}' is not installed ({install})"
    return None


class ServerSpec:
    """A library's launcher, made from its registry entry (``libraries.Server``). Used as it is for a
    server of the common OpenAI schema; subclasses add a library's own behaviour. Constructed without an
    entry, a subclass reads the one of its ``library`` from the package's registry."""

    library: str = ""
    # the serving rows' status when ``unavailable_reason`` says why it cannot run
    unavailable_status: str = "not_installed"
    _python: str | None = None

    @property
    def python(self) -> str:
        """The interpreter of the library's environment (environments.library_python; the sweep sets it;
        unset: this one): the server runs with it (the template's ``{python}``), and what it needs
        installed is looked up there."""
        return self._python or sys.executable

    @python.setter
    def python(self, value: str) -> None:
        self._python = value

    def __init__(self, server: libraries.Server | None = None, library: str | None = None):
        if library:
            self.library = library
        if server is None:
            server = libraries.library(self.library).server
            if server is None:
                raise KeyError(f"library {self.library!r} has no server spec in its registry entry")
        self.server = server

    @property
    def health_path(self) -> str:
        return self.server.health_path

    @property
    def completions_path(self) -> str:
        return self.server.completions_path

    @property
    def prompt_as_text(self) -> bool:
        """The server only takes text prompts."""
        return self.server.prompt_as_text

    @property
    def length_from_finish_reason(self) -> bool:
        """The stream has no ids/usage; ``finish_reason == "length"`` certifies ``max_tokens``."""
        return self.server.length_from_finish_reason

    @property
    def needs(self) -> tuple[str, ...]:
        """ModelFiles attributes the server needs."""
        return self.server.needs

    def unavailable_reason(self) -> str | None:
        """Why this library cannot be served here (None when it can)."""
        install = self.server.install or "see conf/library/" + self.library + ".yaml"
        for name in self.server.requires_commands:
            if missing := _command_missing(name, install, self.python):
                return missing
        for module in self.server.requires_modules:
            if missing := _module_missing(module, install, self.python):
                return missing
        return None

    def model_path(self, cfg: dict, files: ModelFiles) -> str | None:
        """The template's ``{model_path}``: a built engine's folder, else the written-out weights, else the
        GGUF, else the HF folder."""
        return _engine_dir(files.engine_record) or files.weights_dir or files.gguf_path or files.hf_dir

    def _fields(self, cfg: dict, files: ModelFiles | None) -> dict[str, str | None]:
        files = files or ModelFiles()  # a server that loads no files (the loopback) gets none
        return {"model_name": (cfg.get("model") or {}).get("name"), "hf_dir": files.hf_dir,
                "weights_dir": files.weights_dir, "gguf_path": files.gguf_path,
                "model_path": self.model_path(cfg, files)}

    def _fill(self, template: str, fields: dict, what: str) -> str:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        unset = [n for n in names if fields.get(n) is None]
        if unset:
            raise ValueError(f"{self.library} server {what} {template!r} names {{{unset[0]}}}, which this run "
                             f"did not prepare (add its artifact to server.model_files of the library's YAML)")
        return template.format(**{k: str(v) for k, v in fields.items() if v is not None})

    def unsupported_reason(self, cfg: dict) -> str | None:
        """Why this server cannot run the job's config (e.g. its tensor-parallel degree); None when it can."""
        return None

    def served_name(self, cfg: dict, files: ModelFiles) -> str:
        return self._fill(self.server.served_name, self._fields(cfg, files), "served_name")

    def command(self, cfg: dict, files: ModelFiles, host: str, port: int, api_key: str | None) -> LaunchCommand:
        python = self.python
        fields = {**self._fields(cfg, files), "python": python, "host": host, "port": port}
        if "{served_name}" in " ".join(self.server.command):
            fields["served_name"] = self.served_name(cfg, files)
        template = self.server.command
        first = template[0]
        argv = [_executable(first, python) if "{" not in first else self._fill(first, fields, "command")]
        argv += [self._fill(arg, fields, "command") for arg in template[1:]]
        argv += self.extra_args(cfg, files)
        env, secret = dict(self.extra_env(cfg)), ()
        if api_key and self.server.api_key_env:
            env[self.server.api_key_env] = api_key
            secret = (self.server.api_key_env,)
        elif api_key and self.server.api_key_arg:  # the launcher redacts the key in the log
            argv += [self.server.api_key_arg, api_key]
        return LaunchCommand(argv, env, secret)

    def extra_args(self, cfg: dict, files: ModelFiles) -> list[str]:
        """Options made from the library's engine settings, after the template's arguments."""
        return []

    def extra_env(self, cfg: dict) -> dict[str, str]:
        return {}

    def body(self, request: Request, model_name: str, prompt_text: str | None = None) -> dict:
        """The common OpenAI completions request: exactly ``max_tokens`` tokens (``min_tokens`` and
        ``ignore_eos``), greedy, streamed with a usage chunk; plus the registry entry's ``body`` keys."""
        n = request.max_tokens
        prompt: Any = (prompt_text or "") if self.prompt_as_text else list(request.prompt_token_ids)
        body = {"model": model_name, "prompt": prompt, "max_tokens": n, "min_tokens": n, "ignore_eos": True,
                "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
        body.update(copy.deepcopy(dict(self.server.body)))
        return body

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


class NoServer(ServerSpec):
    """A library whose registry entry has no server: every serving row is ``unsupported`` with the reason."""

    unavailable_status = "unsupported"

    def __init__(self, library: str, reason: str):
        self.library = library
        self.reason = reason
        self.server = libraries.Server(command=("{python}",))  # never launched: the sweep stops at the reason

    def unavailable_reason(self) -> str | None:
        return self.reason


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
        if _engine_dir(files.engine_record):
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


def _engine_dir(engine_record: str | None) -> str | None:
    """The engine folder named by the models rules' ``engine.json``, if it says the build succeeded."""
    from inference_eval.models.trtllm_engine import read_engine_record

    if not engine_record:
        return None
    try:
        rec = read_engine_record(engine_record)
    except FileNotFoundError:
        return None
    return rec.get("engine_dir") if rec.get("status") == "ok" else None


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


def server_for(library: libraries.Library) -> ServerSpec:
    """The launcher of a registry entry: its ``launcher`` class, the generic one, or ``NoServer``."""
    return _spec(library.name, library.server, library.unsupported_reason)


def _spec(name: str, server: libraries.Server | None, reason: str) -> ServerSpec:
    if server is None:
        return NoServer(name, reason)
    if not server.launcher:
        return ServerSpec(server, library=name)
    module, _, cls_name = server.launcher.partition(":")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as exc:
        raise libraries.LibraryConfigError(f"library {name!r}: server.launcher {server.launcher!r} cannot be "
                                           f"loaded: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, ServerSpec)):
        raise libraries.LibraryConfigError(f"library {name!r}: server.launcher {server.launcher!r} is not a "
                                           "ServerSpec subclass (inference_eval.serving.servers)")
    return cls(server, library=name)


def server_spec(library: str | Mapping[str, Any]) -> ServerSpec:
    """The launcher of a library: by name (the package's registry, or ``loopback``), or from a job
    config's ``cfg['library']`` (its ``server:`` block, so libraries of ``conf_path`` folders serve too)."""
    if isinstance(library, Mapping):
        name = str(library.get("name") or "")
        server, reason = libraries.parse_server(library.get("server"), name, str(library.get("label") or name),
                                                where=f"library {name!r} of the job config")
        return _spec(name, server, reason)
    if library == "loopback":
        return LoopbackServer()
    try:
        return server_for(libraries.library(library))
    except libraries.LibraryConfigError:
        raise KeyError(f"no serving launcher for library {library!r}; known: {', '.join(sorted(SERVERS))}") from None


class _Servers(Mapping):
    """Launcher factories by name: every library of the package's registry that serves, and ``loopback``.
    Read from the registry when first used."""

    def _names(self) -> list[str]:
        return [n for n, lib in libraries.registry().items() if lib.serves] + ["loopback"]

    def __getitem__(self, name: str) -> Callable[[], ServerSpec]:
        if name not in self._names():
            raise KeyError(name)
        return lambda: server_spec(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


SERVERS: Mapping[str, Callable[[], ServerSpec]] = _Servers()
