"""The schema of every config group, checked when a config is composed.

``conf/schema/<group>.yaml`` is a JSON Schema (draft 2020-12) of one group (``dataset``, ``library``,
``model``, ``hardware``, ``scenario``); ``conf/schema/config.yaml`` covers the root's own keys (matrix,
profiling, seed, results_dir, ...). ``check(cfg, members)`` validates a composed, resolved config against
all of them and raises ``SchemaError`` (``config.compose`` raises it as ``ConfigError``) listing every key
whose value is wrong, with the value and what is allowed, so ``snakemake -n`` stops at parse time instead
of a job failing later. The config itself is
never changed (no type coercion), so config hashes and Snakemake's params stay as they were.

Checks that span several keys follow the schema: a dataset's ``source`` must be one of its ``sources``,
``profiling.model`` a ``conf/model`` member, the model's shapes must pass ``ModelSpec``, and
``library.tensor_parallel`` must fit the hardware's ``gpus`` and the model's heads.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Mapping

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "conf" / "schema"
ROOT = "config"
GROUPS = ("dataset", "library", "model", "hardware", "scenario")  # config.GROUPS (config imports this module)


class SchemaError(ValueError):
    """A config value the schema does not allow; the message names each key, its value and what is allowed."""


@functools.lru_cache(maxsize=None)
def schema(name: str) -> dict:
    """The JSON Schema of group ``name`` (or ``config`` for the root keys)."""
    import yaml

    path = SCHEMA_DIR / f"{name}.yaml"
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), path
    return loaded


@functools.lru_cache(maxsize=None)
def validator(name: str):
    """A draft 2020-12 validator of ``schema(name)`` whose ``integer`` is a Python int (not a bool, not
    ``2.0``): consumers call ``int()`` on these values and a float in the config is a mistake there."""
    from jsonschema import Draft202012Validator, validators

    def is_integer(_checker, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", is_integer)
    cls = validators.extend(Draft202012Validator, type_checker=checker)
    Draft202012Validator.check_schema(schema(name))
    return cls(schema(name))


# -- messages -------------------------------------------------------------------------------------
_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "null": "null", "array": "a list", "object": "a mapping"}


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def describe(s: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> str:
    """What a schema allows, in words: ``an integer >= 1 or null``, ``one of f32, f16, bf16``."""
    root = root if root is not None else s
    if "title" in s:
        return str(s["title"])  # a schema's own short wording (e.g. "'auto'" for a case-blind pattern)
    if "$ref" in s:
        return describe({**_resolve(root, str(s["$ref"])), **{k: v for k, v in s.items() if k != "$ref"}}, root)
    for key in ("anyOf", "oneOf"):
        if key in s:
            return " or ".join(describe(sub, root) for sub in s[key])
    if "enum" in s:
        return "one of " + ", ".join(_value(v) for v in s["enum"])
    if "const" in s:
        return _value(s["const"])
    if "not" in s:
        return "not " + describe(s["not"], root)
    kinds = s.get("type")
    if kinds is None:
        return "anything"
    parts = []
    for kind in ([kinds] if isinstance(kinds, str) else kinds):
        text = _TYPE_WORDS.get(kind, kind)
        if kind in ("integer", "number"):
            bounds = [f"{op} {s[k]:g}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                     ("maximum", "<="), ("exclusiveMaximum", "<")) if k in s]
            text += (" " + " and ".join(bounds)) if bounds else ""
        elif kind == "string":
            if "pattern" in s:
                text += f" matching {s['pattern']}"
            elif s.get("minLength"):
                text = "a non-empty string"
        elif kind == "array":
            n_min, n_max = s.get("minItems"), s.get("maxItems")
            text = (f"a list of {n_min}" if n_min is not None and n_min == n_max
                    else "a non-empty list" if n_min else "a list")
            if "items" in s:
                text += f" of ({describe(s['items'], root)})" if n_min != n_max else f" ({describe(s['items'], root)})"
        elif kind == "object" and s.get("properties") and s.get("additionalProperties") is False:
            text += " with keys " + ", ".join(s["properties"])
        parts.append(text)
    return " or ".join(parts)


def _key(group: str, path) -> str:
    out = "" if group == ROOT else group
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _resolve(root: Mapping[str, Any], ref: str) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _note(root: Mapping[str, Any], error) -> str | None:
    """The innermost ``description`` on the schema path to the failed keyword (what null means, ...)."""
    node: Any = root
    note = None
    for part in list(error.absolute_schema_path)[:-1]:
        if part == "$ref":
            continue
        while isinstance(node, Mapping) and part not in node and "$ref" in node:
            node = _resolve(root, node["$ref"])  # the error path steps through a $ref without naming it
        if part in ("properties", "additionalProperties", "items", "prefixItems"):
            note = None  # a description speaks of its own key, not of the keys under it
        node = node[part]
        if isinstance(node, Mapping) and node.get("description"):
            note = node["description"]
    return note


def _message(group: str, error, where: str) -> str:
    key = _key(group, error.absolute_path)
    root = schema(group)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = set(error.schema.get("properties") or {})
        patterns = [re.compile(p) for p in error.schema.get("patternProperties") or {}]
        extra = sorted(str(k) for k in error.instance
                       if k not in allowed and not any(p.search(str(k)) for p in patterns))
        prefix = f"{key}." if key else ""
        return (f"unknown config key {', '.join(prefix + k for k in extra)}{where}; valid {key or 'root'} keys: "
                f"{', '.join(sorted(allowed))}")
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in str(error.message) else str(error.message)
        return f"config key {key + '.' if key else ''}{missing} is missing{where}"
    if "propertyNames" in list(error.absolute_schema_path)[-2:]:
        return f"unknown config key {key}.{error.instance}{where}; allowed: {describe(error.schema, root)}"
    note = _note(root, error)
    return (f"config key {key} = {_value(error.instance)} is not allowed; expected "
            f"{describe(error.schema, root)}" + (f" ({note})" if note else "") + where)


def _innermost(error) -> list:
    """The errors to report for ``error``: for an ``anyOf`` whose value has the type of exactly one
    branch (a mapping where ``null or a mapping`` is allowed), that branch's own errors, so the message
    names the nested key that is wrong rather than the whole mapping."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    if not isinstance(error.instance, (Mapping, list)):
        return [error]  # a scalar: "an integer >= 1 or null" says more than either branch alone
    by_branch: dict[int, list] = {}
    for sub in error.context:
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    typed = [subs for subs in by_branch.values()
             if not any(e.validator in ("type", "const", "enum") and len(e.relative_schema_path) == 2 for e in subs)]
    if len(typed) != 1:
        return [error]
    return [inner for sub in typed[0] for inner in _innermost(sub)]


def errors(cfg: Mapping[str, Any], members: Mapping[str, str] | None = None) -> list[str]:
    """Every schema violation of a composed config, one message each (empty: the config is valid)."""
    members = members or {}
    out = []
    for group in (ROOT, *GROUPS):
        instance = cfg if group == ROOT else cfg.get(group)
        if group != ROOT and not isinstance(instance, Mapping):
            continue  # the root schema reports a group that is not a mapping
        where = f" [conf/{group}/{members[group]}.yaml or an override]" if group in members else ""
        out += instance_errors(group, instance, where)
    return out


def instance_errors(name: str, instance: Any, where: str = "") -> list[str]:
    """Every violation of ``conf/schema/<name>.yaml`` by ``instance``, one message each naming the key
    (prefixed by ``name`` unless it is the root config), the value and what is allowed, then ``where``."""
    found = sorted((inner for e in validator(name).iter_errors(instance) for inner in _innermost(e)),
                   key=lambda e: [str(p) for p in e.absolute_path])
    return [_message(name, e, where) for e in found]


def cross_key_errors(cfg: Mapping[str, Any], model_members: tuple[str, ...]) -> list[str]:
    """Checks that span keys (run after the schema passed); ``model_members`` are the ``conf/model`` members."""
    out = []
    ds = cfg.get("dataset") or {}
    if not ds.get("synthetic") and ds.get("source") not in (ds.get("sources") or {}):
        out.append(f"config key dataset.source = {_value(ds.get('source'))} has no entry under dataset.sources; "
                   f"valid: {', '.join(ds.get('sources') or {}) or 'none'}")
    prof_model = (cfg.get("profiling") or {}).get("model")
    if prof_model is not None and model_members and prof_model not in model_members:
        out.append(f"config key profiling.model = {_value(prof_model)} is not a conf/model member; valid: "
                   f"{', '.join(model_members)} or null")
    from inference_eval.models.spec import ModelConfigError, ModelSpec
    try:
        ModelSpec.from_config(cfg.get("model") or {})
    except ModelConfigError as exc:
        out.append(f"config group model: {exc}")
    from inference_eval.tensor_parallel import degree_errors
    out += degree_errors(cfg)  # library.tensor_parallel against hardware.gpus and the model's heads
    return out


def check(cfg: Mapping[str, Any], members: Mapping[str, str] | None = None,
          model_members: tuple[str, ...] = ()) -> None:
    """Raise ``SchemaError`` listing every invalid key of the composed config ``cfg``; ``members`` names the
    group members it was composed from (for the messages)."""
    problems = errors(cfg, members)
    if not problems:
        problems = cross_key_errors(cfg, model_members)
    if problems:
        raise SchemaError("invalid config: " + "; ".join(problems))
