"""What every typed record shares: the schema version, the errors, and ``from_dict`` / ``to_dict``.

A record's fields are the keys its file has always had, so files on disk keep their shape; the schema
version is one more key (``schema_version``). Version 1 is a record written before records carried a
version: it has no ``schema_version`` key (or, in a CSV, an empty cell) and still loads, each record
type filling in what version 1 lacked (``_upgrade_v1``). A version this code does not know raises
``RecordVersionError`` naming the file: a record written by a newer tool is not guessed at.

Keys a file has that the record type does not declare are kept in ``extra`` and written back by
``to_dict``, so loading and saving a record loses nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

SCHEMA_VERSION = 2
KNOWN_VERSIONS = (1, 2)
VERSION_KEY = "schema_version"


class RecordError(ValueError):
    """A record that cannot be read as its type; the message names the file (or row) and why."""


class RecordVersionError(RecordError):
    """A record whose ``schema_version`` this code does not know."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def blank_cell(value: Any) -> bool:
    """An empty value of a record or CSV cell: None, "" or NaN (a column that older rows lack)."""
    return _missing(value) or (isinstance(value, str) and not value.strip())


def schema_version(data: Mapping[str, Any], source: str) -> int:
    """The schema version of ``data`` (1 when it has none); ``RecordVersionError`` for an unknown one."""
    value = data.get(VERSION_KEY)
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        return 1
    try:
        version = int(value)
        exact = not isinstance(value, bool) and float(value) == version
    except (TypeError, ValueError):
        exact = False
    if not exact or version not in KNOWN_VERSIONS:
        raise RecordVersionError(f"{source}: unknown {VERSION_KEY} {value!r} (this code reads versions "
                                 f"{', '.join(map(str, KNOWN_VERSIONS))}; a newer inference_eval wrote it?)")
    return version


class Record:
    """Base of the record dataclasses: ``from_dict`` checks the version and upgrades, ``to_dict`` writes the
    current version. A subclass declares its fields (with defaults) and ``extra``, and may set
    ``VERSION_AFTER`` (the field after which ``schema_version`` is written; None: last)."""

    VERSION_AFTER: ClassVar[str | None] = None
    extra: dict[str, Any]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The declared fields, in the order ``to_dict`` writes them (``extra`` and the version aside)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The keys of ``to_dict`` without extras: the fields with ``schema_version`` in its place."""
        names = list(cls.field_names())
        names.insert(names.index(cls.VERSION_AFTER) + 1 if cls.VERSION_AFTER else len(names), VERSION_KEY)
        return tuple(names)

    @classmethod
    def _upgrade_v1(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A version-1 dict as the current fields expect it (default: unchanged; missing keys take the
        fields' defaults)."""
        return data

    @classmethod
    def _check(cls, data: Mapping[str, Any], source: str) -> None:
        """Raise ``RecordError`` naming ``source`` when ``data`` is not this type of record."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>"):
        """The record of ``data`` (a parsed file or CSV row); ``source`` names it in errors."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{source}: a {cls.__name__} is a mapping of keys, got {type(data).__name__}")
        version = schema_version(data, source)
        values = {k: v for k, v in data.items() if k != VERSION_KEY}
        if version == 1:
            values = cls._upgrade_v1(values)
        cls._check(values, source)
        names = set(cls.field_names())
        return cls(**{k: v for k, v in values.items() if k in names},
                   extra={k: v for k, v in values.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The record as its file holds it: the fields in order, ``schema_version`` (the current one),
        then the extra keys."""
        out: dict[str, Any] = {}
        for name in self.columns():
            out[name] = SCHEMA_VERSION if name == VERSION_KEY else getattr(self, name)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


def checked_table(path) -> "pd.DataFrame":  # noqa: F821
    """A CSV of records (sweep rows, module rows) as a DataFrame with its columns as written, for
    vectorised readers, after checking every row's schema version (``RecordVersionError`` naming the file
    and row). A SLURM failure record standing in for the CSV gives its one row
    (``slurm_failures.read_table``)."""
    from inference_eval.slurm_failures import read_table

    frame = read_table(path)
    if VERSION_KEY in frame:
        for i, value in enumerate(frame[VERSION_KEY].tolist()):
            schema_version({VERSION_KEY: value}, f"{path} row {i + 1}")
    return frame
