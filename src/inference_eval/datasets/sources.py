"""Where a dataset's source file comes from: a local path, the data root, or a download URL.

Resolution order for one file spec ``{path, data_root_path, url, sha256}``: an explicit ``path``;
``<data_root>/<data_root_path>`` when the root config's ``data_root`` is set and the file is there; else
``url``, downloaded once into ``<cache>/sources/`` (atomically: a failed download leaves nothing). A
non-null ``sha256`` must match whatever file was found.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from inference_eval.datasets.tokenizer import cache_dir, sha256_file
from inference_eval.requests import DatasetError

DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class SourceFile:
    """A source file on disk, where it came from, and its checksum."""

    path: Path
    origin: str  # "path", "data_root" or the URL it was downloaded from
    sha256: str

    def record(self) -> dict[str, str]:
        return {"file": str(self.path), "origin": self.origin, "sha256": self.sha256}


def _check_sha256(path: Path, expected: str | None, origin: str) -> str:
    got = sha256_file(path)
    if expected and got.lower() != str(expected).lower():
        raise DatasetError(f"{path}: checksum mismatch (from {origin}): sha256 {got}, expected {expected}")
    return got


def download(url: str, expected_sha256: str | None = None, dest_dir: Path | None = None) -> Path:
    """Fetch ``url`` into the cache (once); the file appears only complete and, if given, checksum-verified."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    folder = Path(dest_dir) if dest_dir else cache_dir() / "sources" / key
    target = folder / name
    if target.is_file():
        if not expected_sha256 or sha256_file(target) == expected_sha256.lower():
            return target
        target.unlink()  # a stale or corrupted copy: fetch again
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                    shutil.copyfileobj(resp, out)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise DatasetError(f"cannot download dataset source {url}: {exc}. Give a local file instead "
                                   "(dataset.path=... or data_root=...).") from exc
        _check_sha256(Path(tmp), expected_sha256, url)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve_file(spec: Mapping[str, Any], data_root: str | None) -> SourceFile:
    """The local copy of one source file spec (see the module docstring)."""
    expected = spec.get("sha256")
    if spec.get("path"):
        path = Path(str(spec["path"])).expanduser()
        if not path.is_file():
            raise DatasetError(f"{path}: dataset source file not found")
        return SourceFile(path, "path", _check_sha256(path, expected, "path"))
    if data_root and spec.get("data_root_path"):
        path = Path(str(data_root)).expanduser() / str(spec["data_root_path"])
        if path.is_file():
            return SourceFile(path, "data_root", _check_sha256(path, expected, f"data_root {data_root}"))
    url = spec.get("url")
    if not url:
        where = f" (not under data_root {data_root})" if data_root else ""
        raise DatasetError(f"dataset source {spec.get('data_root_path') or spec}: no path, no url{where}")
    path = download(str(url), expected)
    return SourceFile(path, str(url), sha256_file(path))


def source_file_specs(dataset_cfg: Mapping[str, Any]) -> list[dict]:
    """The file specs of the chosen source; a top-level ``path`` or ``url`` (with optional ``sha256``) replaces them."""
    source = dataset_cfg["source"]
    sources = dataset_cfg.get("sources") or {}
    if source not in sources:
        raise DatasetError(f"dataset {dataset_cfg.get('name')}: unknown source {source!r}; "
                           f"valid: {', '.join(sources) or 'none'}")
    files = [dict(f) for f in (sources[source].get("files") or [])]
    if not files:
        raise DatasetError(f"dataset {dataset_cfg.get('name')}: source {source!r} lists no files")
    top = {k: dataset_cfg.get(k) for k in ("path", "url", "sha256") if dataset_cfg.get(k)}
    if top.get("path") or top.get("url"):
        # a user-given file replaces the default ones entirely (their checksums no longer apply)
        files = [{"path": top.get("path"), "url": top.get("url"), "sha256": top.get("sha256"), "data_root_path": None}]
    return files


def local_source_paths(cfg: Mapping[str, Any]) -> list[str]:
    """Source files of a job already on disk (explicit path or under data_root), for Snakemake's inputs.

    Files still to be downloaded are not listed: their checksum pins them instead.
    """
    ds = cfg["dataset"]
    if ds.get("synthetic"):
        return []
    out = []
    data_root = cfg.get("data_root")
    for spec in source_file_specs(ds):
        if spec.get("path"):
            out.append(str(Path(str(spec["path"])).expanduser()))
        elif data_root and spec.get("data_root_path"):
            candidate = Path(str(data_root)).expanduser() / str(spec["data_root_path"])
            if candidate.is_file():
                out.append(str(candidate))
    return out
