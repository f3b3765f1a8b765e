"""Hydra composition for the pipeline and for single jobs, with errors that list the valid choices.

Snakemake composes the root config once at parse time (``PipelineConfig``), expands the matrix,
and hands every job its fully resolved config as a parameter (so a changed config reruns the job).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from inference_eval import config_roots, config_schema
from inference_eval.redaction import redact_with_digest

CONF_DIR = config_roots.PACKAGE_CONF
GROUPS = ("dataset", "library", "model", "hardware", "scenario")
# Plain `--config` keys that are not Hydra overrides.
SNAKEMAKE_KEYS = ("overrides",)


class ConfigError(ValueError):
    """A bad override or config value; the message lists the valid choices (for a value, the key, the
    value and what its schema in ``conf/schema/`` allows)."""


def conf_dir() -> Path:
    return CONF_DIR


def group_options(group: str, roots: tuple[Path, ...] | None = None) -> tuple[str, ...]:
    """The members of ``group`` in the package's ``conf/`` and the extra ``roots`` (``config_roots``)."""
    try:
        return tuple(config_roots.group_members(group, roots or (CONF_DIR,)))
    except config_roots.ConfRootError as exc:
        raise ConfigError(str(exc)) from None


def root_keys() -> tuple[str, ...]:
    from omegaconf import OmegaConf
    raw = OmegaConf.load(CONF_DIR / "config.yaml")
    return tuple(k for k in raw.keys() if k != "defaults")


def overrides_from_snakemake(config: Mapping[str, Any]) -> list[str]:
    """Turn Snakemake's ``--config`` mapping into Hydra overrides.

    ``--config model=llama2-13b`` becomes ``model=llama2-13b``; dotted keys, which Snakemake's
    ``--config`` cannot carry, go in one key: ``--config overrides="dataset.limit=100 seed=1"``
    (a YAML list works too).
    """
    out: list[str] = []
    for key, value in config.items():
        if key == "overrides":
            items = value if isinstance(value, (list, tuple)) else shlex.split(str(value))
            out.extend(str(v) for v in items)
        else:
            if isinstance(value, (list, tuple)):
                value = "[" + ",".join(str(v) for v in value) + "]"
            elif isinstance(value, bool):
                value = str(value).lower()
            out.append(f"{key}={value}")
    validate_overrides(out)
    return out


_OVERRIDE = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[A-Za-z_][\w.\-@/]*)(=(?P<value>.*))?$", re.S)


def _roots(overrides: Iterable[str]) -> tuple[Path, ...]:
    try:
        return config_roots.roots_from_overrides(overrides)
    except config_roots.ConfRootError as exc:
        raise ConfigError(str(exc)) from None


def validate_overrides(overrides: Iterable[str], roots: tuple[Path, ...] | None = None) -> None:
    """Reject unknown keys and group values before Hydra does, with the valid ones listed."""
    overrides = list(overrides)
    roots = roots or _roots(overrides)
    top = set(root_keys()) | set(GROUPS)
    for ov in overrides:
        m = _OVERRIDE.match(ov)
        if not m or m.group("value") is None:
            raise ConfigError(f"bad override {ov!r}: expected key=value (valid keys: {', '.join(sorted(top))})")
        key, value = m.group("key"), m.group("value").strip("'\"")
        head = key.split(".")[0]
        if m.group("prefix"):
            continue  # explicit append/delete: Hydra checks these itself
        if head not in top:
            raise ConfigError(
                f"unknown config key {key!r} in override {ov!r}; valid keys: {', '.join(sorted(top))}"
                + " (Snakemake's --config cannot carry dots: use --config overrides=\"a.b=1 c.d=2\")")
        if key in GROUPS and value not in group_options(key, roots):
            raise ConfigError(
                f"unknown {key} {value!r}; valid {key} choices: {', '.join(group_options(key, roots))}")


def _quote_numeric_choice(override: str) -> str:
    """``hardware=3090`` would reach Hydra as an int; group choices must be strings."""
    key, sep, value = override.partition("=")
    if sep and key in GROUPS and value.isdigit():
        return f"{key}='{value}'"
    return override


@functools.lru_cache(maxsize=None)
def member_keys(group: str, roots: tuple[Path, ...] | None = None) -> dict[str, frozenset[str]]:
    """Top-level keys of each member of a config group."""
    from omegaconf import OmegaConf

    return {name: frozenset(OmegaConf.load(path).keys())
            for name, path in config_roots.group_members(group, roots or (CONF_DIR,)).items()}


@functools.lru_cache(maxsize=None)
def default_members() -> dict[str, str]:
    from omegaconf import OmegaConf

    out = {}
    for entry in OmegaConf.load(CONF_DIR / "config.yaml").get("defaults", []):
        if hasattr(entry, "items"):  # `- group: member` entries (a plain `_self_` has none)
            out.update({str(k): str(v) for k, v in entry.items()})
    return out


def chosen_members(overrides: Iterable[str]) -> dict[str, str]:
    """The member of each group a compose with ``overrides`` uses (the defaults, then ``group=member``)."""
    chosen = dict(default_members())
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if sep and key in GROUPS:
            chosen[key] = value.strip("'\"")
    return chosen


def applicable_overrides(overrides: list[str], roots: tuple[Path, ...] | None = None) -> list[str]:
    """Drop ``group.key=value`` overrides that belong to another member of the group than the one chosen.

    One override list serves every job of a run: ``scenario.num_requests=160`` is meant for serving
    jobs, ``library.gguf_dtype=bf16`` for llama.cpp jobs; a batch or vLLM job composes without them.
    A key that no member of the group has is a typo and stops with the valid keys listed.
    """
    chosen = chosen_members(overrides)
    out = []
    for ov in overrides:
        m = _OVERRIDE.match(ov)
        parts = m.group("key").split(".") if m else []
        if m and not m.group("prefix") and len(parts) > 1 and parts[0] in GROUPS:
            group, key = parts[0], parts[1]
            members = member_keys(group, roots)
            if key not in members.get(chosen.get(group, ""), frozenset()):
                if not any(key in keys for keys in members.values()):
                    valid = sorted(set().union(*members.values()))
                    raise ConfigError(f"unknown config key {m.group('key')!r} in override {ov!r}: no {group} "
                                      f"member has {key!r}; valid {group} keys: {', '.join(valid)}")
                continue  # meant for another member of this group
        out.append(ov)
    return out


def compose(overrides: Iterable[str] = ()) -> dict:
    """Compose ``conf/config.yaml`` with ``overrides`` and return a plain, resolved dict."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = [_quote_numeric_choice(o) for o in overrides]
    roots = _roots(overrides)
    validate_overrides(overrides, roots)
    members = chosen_members(overrides)
    overrides = applicable_overrides(overrides, roots)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config",
                                overrides=overrides + config_roots.searchpath_override(roots))
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"cannot compose config with overrides {overrides}: {exc}") from exc
    assert isinstance(resolved, dict)
    try:
        config_schema.check(resolved, members, group_options("model", roots))
    except config_schema.SchemaError as exc:
        raise ConfigError(str(exc)) from None
    _check_values(resolved, roots)
    return resolved


def _check_values(cfg: dict, roots: tuple[Path, ...] | None = None) -> None:
    matrix = cfg.get("matrix") or {}
    for key, group in (("datasets", None), ("libraries", "library"), ("models", "model"), ("scenarios", "scenario")):
        values = matrix.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"matrix.{key} must be a non-empty list, got {values!r}")
        if group:
            bad = [v for v in values if v not in group_options(group, roots)]
            if bad:
                raise ConfigError(f"unknown matrix.{key} {bad}; valid: {', '.join(group_options(group, roots))}")
    variant = matrix.get("dataset_variant", "synthetic")
    if variant not in ("synthetic", "real"):
        raise ConfigError(f"matrix.dataset_variant must be 'synthetic' or 'real', got {variant!r}")
    for d in matrix.get("datasets") or []:
        if dataset_option(d, variant) not in group_options("dataset", roots):
            raise ConfigError(f"unknown matrix.datasets entry {d!r}; valid: s2s, s2l, s16k, l2s")


def dataset_option(task: str, variant: str) -> str:
    """The ``dataset`` group member for a task shape (s2s, ...) and variant (synthetic | real)."""
    return f"{task}-synthetic" if variant == "synthetic" else task


def config_hash(cfg: Mapping[str, Any]) -> str:
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class JobConfig(dict):
    """One job's resolved config, as rules pass it in ``params``. Snakemake keeps ``repr`` of every
    param in ``.snakemake/metadata`` to notice changes: here that repr shows secrets (``scenario.api_key``
    and the like) only as digests. Pickled (the job script's copy) it is a plain dict, secrets included."""

    def __repr__(self) -> str:
        return repr(redact_with_digest(dict(self)))

    def __reduce__(self):
        return (dict, (dict(self),))


@dataclass
class PipelineConfig:
    """The root config plus the expanded matrix, as Snakemake's rules see it."""

    overrides: list[str]
    root: dict
    hardware: str
    detected_hardware: str
    _cache: dict = field(default_factory=dict)

    @classmethod
    def from_snakemake(cls, config: Mapping[str, Any]) -> "PipelineConfig":
        from inference_eval.hardware import detect_hardware

        overrides = overrides_from_snakemake(config)
        detected = detect_hardware()
        if not any(o.startswith("hardware=") for o in overrides):
            overrides = overrides + [f"hardware={detected}"]
        root = compose(overrides)
        pipeline = cls(overrides=overrides, root=root, hardware=root["hardware"]["name"], detected_hardware=detected)
        pipeline.check_members()
        return pipeline

    def check_members(self) -> None:
        """Compose every member the matrix uses once, so a value that is wrong only for one of them
        (``library.gguf_dtype=q4`` is llama.cpp's) stops at parse time as well, not while the DAG is built."""
        for group, members in (("dataset", self.datasets), ("library", self.libraries), ("model", self.models),
                               ("scenario", self.scenarios)):
            for member in members:
                self.job(**{group: member})
        # each tensor-parallel degree of the matrix, so a degree above hardware.gpus stops here too
        for degree in self.matrix.get("tensor_parallel") or [1]:
            if degree > 1:
                for library in self.libraries:
                    self.job(library=f"{library}-tp{degree}")

    @property
    def matrix(self) -> dict:
        return self.root["matrix"]

    @property
    def roots(self) -> tuple[Path, ...]:
        """The conf folders of this run: the package's ``conf/`` and ``conf_path`` (``config_roots``)."""
        return config_roots.roots_of(self.root)

    @property
    def datasets(self) -> list[str]:
        return list(self.matrix["datasets"])

    @property
    def libraries(self) -> list[str]:
        return list(self.matrix["libraries"])

    @property
    def models(self) -> list[str]:
        return list(self.matrix["models"] or [self.root["model"]["name"]])

    @property
    def scenarios(self) -> list[str]:
        return list(self.matrix["scenarios"])

    def dataset_option(self, task: str) -> str:
        return dataset_option(task, self.matrix["dataset_variant"])

    def job(self, **choices: str) -> dict:
        """Resolved config of one job: ``job(dataset='s2s', library='vllm', model=..., hardware=..., scenario=...)``.

        ``dataset`` is the task key (s2s...); the variant picks the member. Group overrides the user
        gave for other groups stay; the job's own choices replace them.
        """
        key = tuple(sorted(choices.items()))
        if key not in self._cache:
            chosen = dict(choices)
            if "dataset" in chosen:
                chosen["dataset"] = self.dataset_option(chosen["dataset"])
            if "dataset_member" in chosen:  # a member name as it is (s2s-synthetic, l2s, ...)
                chosen["dataset"] = chosen.pop("dataset_member")
            degree = self._library_degree(chosen)
            kept = [o for o in self.overrides if o.split("=", 1)[0] not in chosen]
            if degree is not None:  # the library name's -tp<N> sets the degree (inference_eval.tensor_parallel)
                kept = [o for o in kept if o.split("=", 1)[0] != "library.tensor_parallel"]
            extra = [] if degree is None else [f"library.tensor_parallel={degree}"]
            cfg = compose(kept + [f"{g}={v}" for g, v in chosen.items()] + extra)
            if degree is None and "library" in choices and (cfg["library"].get("tensor_parallel") or 1) != 1:
                t = cfg["library"]["tensor_parallel"]
                raise ConfigError(f"library.tensor_parallel = {t} for library {choices['library']!r}: name the degree "
                                  f"in the library instead ({choices['library']}-tp{t}, or matrix.tensor_parallel="
                                  f"[1,{t}]), so that output paths say it (docs/tensor-parallel.md)")
            self._cache[key] = JobConfig(cfg)
        return self._cache[key]

    @staticmethod
    def _library_degree(chosen: dict) -> int | None:
        """Turn ``library=vllm-tp2`` in ``chosen`` into ``library=vllm``; returns the degree (None: none named)."""
        from inference_eval.tensor_parallel import TensorParallelError, split_library

        if "library" not in chosen:
            return None
        try:
            chosen["library"], degree = split_library(chosen["library"])
        except TensorParallelError as exc:
            raise ConfigError(str(exc)) from None
        return degree
