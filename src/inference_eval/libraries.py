"""The library registry: ``conf/library/<name>.yaml`` is the one place a library is declared.

Besides its engine settings (which the backend and launcher read from the job config), each file says
how the rest of the tool treats the library, and everything else derives from it:

- ``label``: its short name in tables and figures (``report.tables``);
- ``backend``: the batch backend class, ``'package.module:ClassName'`` (``backends.base.Backend``);
- ``module``: its Python import name; a written-out weights file (13 GB for a 7B model) is planned only
  where it is importable (``rules/common.smk``);
- ``packages``: distribution names whose versions every record's provenance keeps (``report.provenance``);
- ``model_files``: the artifacts a batch run needs from the models rules (``ARTIFACTS``);
- ``server``: how its OpenAI-compatible server is launched (``Server``; ``serving.servers`` builds the
  launcher from it), or ``null`` / ``{unsupported: <reason>}``: it cannot serve, and its serving rows say
  ``unsupported`` with that reason;
- ``module_profiling``: the profiled variants it supports (``ProfiledVariant``; ``rules/profiling.smk``).

Files come from the package's ``conf/library/`` and from the ``library/`` folder of each ``conf_path``
folder (``config_roots``). A bad entry raises ``LibraryConfigError`` naming the file and the key. The
files are read as written (not composed): overrides change a job's config, not the registry.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from inference_eval import config_roots

# Artifacts the models rules make (rules/models.smk), with the named rule input each becomes and the
# ModelFiles attribute a backend or launcher receives it as.
ARTIFACTS = ("hf", "safetensors", "gguf", "trt_engine")
ARTIFACT_INPUTS = {"hf": "hf", "safetensors": "weights", "gguf": "gguf", "trt_engine": "engine"}
ARTIFACT_FILES = {"hf": "hf_dir", "safetensors": "weights_dir", "gguf": "gguf_path", "trt_engine": "engine_record"}
PROMPTS = ("token_ids", "text")
LENGTH_CHECKS = ("stream", "finish_reason")
# The in-process profiling runners (profiling.runners.RUNNERS) and the theory's byte models (theory.ops).
RUNNERS = ("transformers", "vllm")
BYTE_MODELS = ("fused", "unfused")
# What a server command template may name (serving.servers fills them in).
COMMAND_FIELDS = ("python", "host", "port", "served_name", "model_name", "hf_dir", "weights_dir", "gguf_path",
                  "model_path")
SERVED_NAME_FIELDS = ("model_name", "hf_dir", "weights_dir", "gguf_path")
NO_SERVER = "conf/library/{name}.yaml has no server spec (server: null): {label} cannot serve here"


class LibraryConfigError(ValueError):
    """A library YAML that the registry cannot use; the message names the file and the key."""


@dataclass(frozen=True)
class Server:
    """How a library's OpenAI-compatible server is started and spoken to (``server:`` of its YAML)."""

    command: tuple[str, ...]                 # argv template (COMMAND_FIELDS)
    launcher: str | None = None              # 'module:Class' of a ServerSpec subclass; None: the generic one
    health_path: str = "/health"
    completions_path: str = "/v1/completions"
    prompt: str = "token_ids"                # token_ids | text
    length_check: str = "stream"             # stream | finish_reason
    served_name: str = "{model_name}"        # template of the model name requests carry
    model_files: tuple[str, ...] = ("hf",)
    requires_modules: tuple[str, ...] = ()
    requires_commands: tuple[str, ...] = ()
    install: str = ""
    api_key_env: str | None = None           # the server reads scenario.api_key from this variable
    api_key_arg: str | None = None           # ... or from this option
    body: tuple[tuple[str, Any], ...] = ()   # keys added to every request body of the generic launcher

    @property
    def prompt_as_text(self) -> bool:
        return self.prompt == "text"

    @property
    def length_from_finish_reason(self) -> bool:
        return self.length_check == "finish_reason"

    @property
    def needs(self) -> tuple[str, ...]:
        """ModelFiles attributes that must exist before launch: the files the command names
        (``{model_path}`` falls back to the HF folder, so that one)."""
        named = {f for arg in self.command for _, f, _, _ in string.Formatter().parse(arg) if f}
        named = {"hf_dir" if f == "model_path" else f for f in named}
        return tuple(a for a in ARTIFACT_FILES.values() if a in named)


@dataclass(frozen=True)
class ProfiledVariant:
    """One profiled variant of a library: ``results/<hw>/modules/<name>_<stage>_<sweep>.csv``."""

    name: str
    library: str
    runner: str                              # RUNNERS
    attn_implementation: str | None = None
    model_files: tuple[str, ...] = ()
    byte_model: str = "fused"
    unfused_ops: tuple[str, ...] = ()

    def op_byte_model(self, op: str) -> str:
        """Which of the theory's byte models describes how this variant moves ``op``'s data."""
        return "unfused" if op in self.unfused_ops else self.byte_model


@dataclass(frozen=True)
class Library:
    name: str
    label: str
    backend: str
    path: Path
    module: str | None = None
    packages: tuple[str, ...] = ()
    model_files: tuple[str, ...] = ("hf",)
    server: Server | None = None
    unsupported_reason: str = ""             # why it cannot serve (server is None)
    variants: tuple[ProfiledVariant, ...] = field(default=())

    @property
    def serves(self) -> bool:
        return self.server is not None


# -- reading one file -----------------------------------------------------------------------------
def _fail(path: Path | str, key: str, message: str) -> LibraryConfigError:
    return LibraryConfigError(f"{path}: key {key}: {message}")


def _schema_errors(raw: Mapping[str, Any], path: Path) -> None:
    """The library schema (conf/schema/library.yaml), with the file and the most specific bad key named."""
    from jsonschema.exceptions import best_match

    from inference_eval import config_schema

    root = config_schema.schema("library")
    e = best_match(config_schema.validator("library").iter_errors(raw))
    if e is None:
        return
    parts = list(e.absolute_path)
    server = raw.get("server")
    if e.validator == "anyOf" and list(e.absolute_path) == ["server"] and isinstance(server, Mapping) \
            and "unsupported" not in server:
        # a launch spec, not {unsupported: ...}: name the key of the spec that is wrong
        from jsonschema import Draft202012Validator

        spec = Draft202012Validator({"$defs": root["$defs"], "$ref": "#/$defs/server"})
        inner = best_match(spec.iter_errors(server))
        if inner is not None:
            e, parts = inner, ["server", *inner.absolute_path]
    key = ".".join(str(p) for p in parts) or "(top level)"
    if e.validator in ("required", "additionalProperties"):
        allowed = e.schema.get("properties") if e.validator == "additionalProperties" else None
        raise _fail(path, key, str(e.message) + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
    raise _fail(path, key, f"{e.instance!r} is not allowed; expected {config_schema.describe(e.schema, root)}")


def _template_fields(text: str, allowed: Iterable[str], path: Path, key: str) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise _fail(path, key, f"bad template {text!r}: {exc}") from None
    bad = [n for n in names if n not in allowed]
    if bad:
        raise _fail(path, key, f"unknown placeholder {{{bad[0]}}} in {text!r}; valid: "
                    + ", ".join("{" + f + "}" for f in allowed))


def _artifacts(value: Any, path: Path, key: str, need_hf: bool) -> tuple[str, ...]:
    items = tuple(value) if value is not None else ("hf",)
    if need_hf and "hf" not in items:
        raise _fail(path, key, f"{list(items)} lacks hf (every run reads the model's config and tokenizer from it)")
    return items


def _server(raw: Any, name: str, label: str, path: Path) -> tuple[Server | None, str]:
    if raw is None:
        return None, NO_SERVER.format(name=name, label=label)
    if set(raw) == {"unsupported"}:
        return None, str(raw["unsupported"])
    command = tuple(str(a) for a in raw["command"])
    for i, arg in enumerate(command):
        _template_fields(arg, COMMAND_FIELDS, path, f"server.command[{i}]")
    served = str(raw.get("served_name") or "{model_name}")
    _template_fields(served, SERVED_NAME_FIELDS, path, "server.served_name")
    requires = raw.get("requires") or {}
    api_key = raw.get("api_key") or {}
    body = raw.get("body") or {}
    return Server(command=command, launcher=raw.get("launcher"), health_path=raw.get("health_path", "/health"),
                  completions_path=raw.get("completions_path", "/v1/completions"),
                  prompt=raw.get("prompt", "token_ids"), length_check=raw.get("length_check", "stream"),
                  served_name=served,
                  model_files=_artifacts(raw.get("model_files"), path, "server.model_files", need_hf=True),
                  requires_modules=tuple(requires.get("modules") or ()),
                  requires_commands=tuple(requires.get("commands") or ()),
                  install=str(requires.get("install") or ""), api_key_env=api_key.get("env"),
                  api_key_arg=api_key.get("arg"), body=tuple(sorted(body.items()))), ""


def parse_server(raw: Any, name: str, label: str = "", where: str = "job config") -> tuple[Server | None, str]:
    """A ``server:`` block as a job config carries it (``cfg['library']['server']``, which the schema
    checked when the config was composed): the spec, or None and the reason the library cannot serve.
    ``where`` names the source in errors."""
    return _server(raw, name, label or name, Path(where))


def _variants(raw: Any, name: str, path: Path) -> tuple[ProfiledVariant, ...]:
    out = []
    for variant, entry in (raw or {}).items():
        out.append(ProfiledVariant(name=str(variant), library=name, runner=entry["runner"],
                                   attn_implementation=entry.get("attn_implementation"),
                                   model_files=tuple(entry.get("model_files") or ()),
                                   byte_model=entry.get("byte_model", "fused"),
                                   unfused_ops=tuple(entry.get("unfused_ops") or ())))
    return tuple(out)


def read_library(path: str | Path) -> Library:
    """One ``library/<name>.yaml``, checked: the schema, the name against the file, the templates."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LibraryConfigError(f"{path}: cannot read the library file: {exc}") from None
    if not isinstance(raw, Mapping):
        raise LibraryConfigError(f"{path}: a library file must be a mapping, got {type(raw).__name__}")
    _schema_errors(raw, path)
    name = str(raw["name"])
    if name != path.stem:
        raise _fail(path, "name", f"{name!r} differs from the file's name {path.stem!r} (the group member)")
    label = str(raw["label"])
    server, reason = _server(raw.get("server"), name, label, path)
    return Library(name=name, label=label, backend=str(raw["backend"]), path=path, module=raw.get("module"),
                   packages=tuple(raw.get("packages") or ()),
                   model_files=_artifacts(raw.get("model_files"), path, "model_files", need_hf=True),
                   server=server, unsupported_reason=reason, variants=_variants(raw.get("module_profiling"), name, path))


# -- the registry ---------------------------------------------------------------------------------
def _roots(roots: Iterable[str | Path] | None) -> tuple[Path, ...]:
    return tuple(Path(r) for r in roots) if roots else (config_roots.PACKAGE_CONF,)


@functools.lru_cache(maxsize=None)
def _registry(roots: tuple[Path, ...]) -> dict[str, Library]:
    try:
        members = config_roots.group_members("library", roots)
    except config_roots.ConfRootError as exc:
        raise LibraryConfigError(str(exc)) from None
    libs = {name: read_library(path) for name, path in members.items()}
    seen: dict[str, Path] = {}
    for lib in libs.values():
        for v in lib.variants:
            if v.name in seen:
                raise _fail(lib.path, f"module_profiling.{v.name}",
                            f"variant {v.name!r} is defined twice: {seen[v.name]} and {lib.path} (variant "
                            "names are unique across libraries)")
            seen[v.name] = lib.path
    return libs


def registry(roots: Iterable[str | Path] | None = None) -> dict[str, Library]:
    """Every library of the conf folders ``roots`` (default: the package's ``conf/``), by name."""
    return dict(_registry(_roots(roots)))


def library(name: str, roots: Iterable[str | Path] | None = None) -> Library:
    libs = _registry(_roots(roots))
    if name not in libs:
        raise LibraryConfigError(f"unknown library {name!r}; known (conf/library/*.yaml and conf_path): "
                                 f"{', '.join(libs)}")
    return libs[name]


def names(roots: Iterable[str | Path] | None = None) -> list[str]:
    return list(_registry(_roots(roots)))


def label(name: str, roots: Iterable[str | Path] | None = None, default: str | None = None) -> str:
    """The library's table label; ``default`` (else the name itself) for a library the registry lacks."""
    lib = _registry(_roots(roots)).get(name)
    if lib is not None:
        return lib.label
    return default if default is not None else name


def package_names(roots: Iterable[str | Path] | None = None) -> tuple[str, ...]:
    """Every library's distribution names, in registry order, each once."""
    return tuple(dict.fromkeys(p for lib in _registry(_roots(roots)).values() for p in lib.packages))


def profiled_variants(roots: Iterable[str | Path] | None = None) -> dict[str, ProfiledVariant]:
    """Every profiled variant of every library, by variant name (registry order)."""
    return {v.name: v for lib in _registry(_roots(roots)).values() for v in lib.variants}


def profiled_variant(name: str, roots: Iterable[str | Path] | None = None) -> ProfiledVariant:
    variants = profiled_variants(roots)
    if name not in variants:
        raise LibraryConfigError(f"unknown profiled library {name!r}; valid (module_profiling of "
                                 f"conf/library/*.yaml): {', '.join(variants) or 'none'}")
    return variants[name]


def artifact_inputs(artifacts: Iterable[str]) -> list[str]:
    """The named rule inputs (``hf``, ``weights``, ``gguf``, ``engine``) of a list of artifacts."""
    return [ARTIFACT_INPUTS[a] for a in artifacts]
