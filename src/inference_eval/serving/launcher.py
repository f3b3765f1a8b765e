"""A library's server launcher: ``ServerSpec`` turns a registry entry's ``server:`` block into the command
that starts the server and the request body that asks it for exactly ``max_tokens`` tokens with EOS ignored.

The data of a launcher lives in the library's registry entry (``server:`` of ``conf/library/<name>.yaml``,
read as ``libraries.Server``): the command template, the health route, how the model path, the served
name, the port and the API key are passed, what must be installed, how prompts go and how the length is
certified. A library whose server speaks the common OpenAI schema (token-id or text prompts,
``min_tokens``, ``ignore_eos``, a usage chunk) needs no code beyond this module; the engines' own
behaviour is in ``serving.engine_servers``, and ``serving.servers`` picks a library's launcher.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_eval import environments, libraries
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
        return engine_dir(files.engine_record) or files.weights_dir or files.gguf_path or files.hf_dir

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



def engine_dir(engine_record: str | None) -> str | None:
    """The engine folder named by the models rules' ``engine.json``, if it says the build succeeded."""
    from inference_eval.models.trtllm_engine import read_engine_record

    if not engine_record:
        return None
    try:
        rec = read_engine_record(engine_record)
    except FileNotFoundError:
        return None
    return rec.get("engine_dir") if rec.get("status") == "ok" else None

