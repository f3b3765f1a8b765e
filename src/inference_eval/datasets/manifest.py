"""Reading a built dataset's ``manifest.json`` (written by ``datasets/build.py`` beside ``rows.jsonl``).

Batch records and serving sweeps take the dataset's source, synthetic flag and row checksum from it;
both read it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def manifest_path(rows_path: str | Path) -> Path:
    """Where the manifest of the rows file ``rows_path`` is: ``manifest.json`` in the same folder."""
    return Path(rows_path).with_name("manifest.json")


def read_manifest(rows_path: str | Path) -> dict[str, Any]:
    """The dataset's manifest beside its rows (``{}`` where there is none, e.g. in unit tests).

    A manifest that exists but cannot be read or parsed raises ``ValueError`` naming the file."""
    path = manifest_path(rows_path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable dataset manifest {path}: {exc}") from exc


def read_manifest_or_empty(rows_path: str | Path | None) -> dict[str, Any]:
    """Like ``read_manifest``, but ``{}`` also for no rows path and for an unreadable manifest: for callers
    that only label their output with the manifest's facts and fall back to the job's config."""
    if not rows_path:
        return {}
    try:
        return read_manifest(rows_path)
    except ValueError:
        return {}
