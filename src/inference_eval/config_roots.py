"""Where config groups are looked for: the package's ``conf/`` and the extra folders of ``conf_path``.

``conf_path`` (a root key of ``conf/config.yaml``, default ``[]``) lists folders laid out like ``conf/``
(``library/<name>.yaml``, ``model/<name>.yaml``, ...). Their members join the package's: Hydra searches
them (``hydra.searchpath``), and every list of a group's members (valid choices, the library registry of
``inference_eval.libraries``) includes them. So a user adds a library, a model or a hardware profile from a
folder of their own, without editing the package:

    snakemake --cores 8 all --config conf_path=[/home/me/ie-conf]

A member name defined in two folders is an error naming both files (which one Hydra would pick depends
on the search order, so it is never left to chance). Relative folders are taken from the working
directory (Snakemake's ``--directory``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable, Mapping

PACKAGE_CONF = Path(__file__).resolve().parents[2] / "conf"
ROOT_KEY = "conf_path"


class ConfRootError(ValueError):
    """A ``conf_path`` entry that is not a folder, or a member defined in two conf folders."""


def _parse_value(text: str) -> list[str]:
    """The folders of a ``conf_path=<value>`` override, read with Hydra's own override grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = OverridesParser.create().parse_override(f"{ROOT_KEY}={text}").value()
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfRootError(f"{ROOT_KEY} must be a list of folders, e.g. {ROOT_KEY}=[/path/to/conf], got {text!r}")
    return [str(v) for v in value]


def extra_dirs_from_overrides(overrides: Iterable[str]) -> tuple[str, ...]:
    """The ``conf_path`` folders that a list of Hydra overrides sets (the last one wins; none: ``()``)."""
    found: list[str] = []
    for ov in overrides:
        key, sep, value = str(ov).partition("=")
        if sep and key.lstrip("+") == ROOT_KEY:
            found = _parse_value(value)
    return tuple(found)


def roots(extra: Iterable[str] = ()) -> tuple[Path, ...]:
    """The package's ``conf/`` followed by each extra folder (absolute), each checked to be a folder."""
    out = [PACKAGE_CONF]
    for entry in extra:
        path = Path(entry).expanduser().resolve()
        if not path.is_dir():
            raise ConfRootError(f"{ROOT_KEY} entry {entry!r} is not a folder ({path})")
        if path not in out:
            out.append(path)
    return tuple(out)


def roots_from_overrides(overrides: Iterable[str]) -> tuple[Path, ...]:
    return roots(extra_dirs_from_overrides(overrides))


def roots_of(cfg: Mapping[str, Any]) -> tuple[Path, ...]:
    """The conf folders a composed config was made from (its ``conf_path``)."""
    return roots(cfg.get(ROOT_KEY) or ())


def searchpath_override(conf_roots: tuple[Path, ...]) -> list[str]:
    """The Hydra override that adds the extra folders to its search path (none: ``[]``)."""
    extra = [p for p in conf_roots if p != PACKAGE_CONF]
    if not extra:
        return []
    return ["hydra.searchpath=[" + ",".join(f"'file://{p.as_posix()}'" for p in extra) + "]"]


@functools.lru_cache(maxsize=None)
def group_members(group: str, conf_roots: tuple[Path, ...] = (PACKAGE_CONF,)) -> dict[str, Path]:
    """Every member of config group ``group`` across ``conf_roots``: name -> its YAML file, sorted by name."""
    found: dict[str, Path] = {}
    for root in conf_roots:
        for path in sorted((Path(root) / group).glob("*.yaml")):
            if path.stem in found:
                raise ConfRootError(f"{group} {path.stem!r} is defined twice: {found[path.stem]} and {path}; "
                                    f"rename one (member names are unique across {ROOT_KEY} folders)")
            found[path.stem] = path
    return dict(sorted(found.items()))
