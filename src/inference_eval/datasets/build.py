"""Build one dataset member (``s2s``, ``l2s-synthetic``, ...) from its resolved config and write it.

Output: ``rows.jsonl`` (``{id, prompt, prompt_token_ids, max_tokens}`` per line) and ``manifest.json``
(source files and checksums, rule, seed, row counts, length statistics, synthetic flag, tokenizer,
provenance). Nothing is written until the whole dataset is built and checked; the manifest is written
last, so a manifest always describes complete rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from inference_eval.datasets import readers, rules
from inference_eval.datasets.rules import DatasetRow, RuleResult, rng
from inference_eval.datasets.sources import SourceFile, resolve_file, source_file_specs
from inference_eval.datasets.stats import length_stats
from inference_eval.datasets.synthetic import synthetic_rows
from inference_eval.io import atomic_path, write_json
from inference_eval.requests import DatasetError

TASKS = ("s2s", "s2l", "s16k", "l2s")
SOURCES = ("paper", "alpaca", "vicuna", "sharegpt", "synthetic")


@dataclass
class BuiltDataset:
    member: str
    rows: list[DatasetRow]
    manifest: dict[str, Any]


def member_name(dataset_cfg: Mapping[str, Any]) -> str:
    return f"{dataset_cfg['name']}-synthetic" if dataset_cfg.get("synthetic") else str(dataset_cfg["name"])


def _check_config(ds: Mapping[str, Any]) -> None:
    if ds.get("name") not in TASKS:
        raise DatasetError(f"dataset name must be one of {', '.join(TASKS)}, got {ds.get('name')!r}")
    if ds.get("source") not in SOURCES:
        raise DatasetError(f"dataset {ds['name']}: source must be one of {', '.join(SOURCES)}, got {ds.get('source')!r}")
    if bool(ds.get("synthetic")) != (ds.get("source") == "synthetic"):
        raise DatasetError(f"dataset {ds['name']}: synthetic={ds.get('synthetic')} disagrees with source "
                           f"{ds.get('source')!r} (synthetic members use source 'synthetic')")
    for key in ("limit", "max_tokens_cap"):
        value = ds.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise DatasetError(f"dataset {ds['name']}: {key} must be a positive integer or null, got {value!r}")


def _encoder(tok):
    def encode(texts):
        return [list(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]
    return encode


def _single(files: list[SourceFile], source: str) -> SourceFile:
    if len(files) != 1:
        raise DatasetError(f"source {source!r} reads exactly one file, got {len(files)}: "
                           + ", ".join(str(f.path) for f in files))
    return files[0]


def _from_source(ds: Mapping[str, Any], files: list[SourceFile], encode) -> RuleResult:
    source = ds["source"]
    rule = ds["sources"][source]
    seed = int(ds["seed"])
    where = ", ".join(str(f.path) for f in files)
    if source == "paper":
        f = _single(files, source)
        default = rule.get("default_max_tokens")
        rows = readers.read_paper(f.path, require_max_tokens=default is None)
        return rules.from_paper(rows, encode, ds["name"], where, default)
    if source == "alpaca":
        return rules.from_alpaca(readers.read_alpaca(_single(files, source).path), encode, rule, seed, where)
    if source == "vicuna":
        return rules.from_prompts_fixed(readers.read_vicuna(_single(files, source).path), encode, rule, "vicuna",
                                        where)
    if source == "sharegpt":
        prompts = [p for f in files for p in readers.read_sharegpt(f.path)]
        return rules.from_sharegpt(prompts, encode, rule, seed, where)
    raise DatasetError(f"dataset {ds['name']}: no builder for source {source!r}")


def build_dataset(cfg: Mapping[str, Any]) -> BuiltDataset:
    """Build the member ``cfg['dataset']`` describes (``cfg`` is a job's resolved config)."""
    ds = cfg["dataset"]
    _check_config(ds)
    member = member_name(ds)
    seed = int(ds["seed"])
    if ds["synthetic"]:
        result = synthetic_rows(ds["name"], ds["profile"], seed)
        files: list[SourceFile] = []
        tokenizer = None
    else:
        from inference_eval.datasets.tokenizer import OFFLINE_LLAMA2, load_tokenizer, tokenizer_id

        files = [resolve_file(spec, cfg.get("data_root")) for spec in source_file_specs(ds)]
        spec = ds.get("tokenizer") or OFFLINE_LLAMA2
        result = _from_source(ds, files, _encoder(load_tokenizer(spec)))
        tokenizer = tokenizer_id(spec)
    rows = result.rows
    before = len(rows)
    if ds.get("limit") and ds["limit"] < len(rows):
        keep = sorted(rng(seed, f"{member}-limit").choice(len(rows), size=ds["limit"], replace=False))
        rows = [rows[i] for i in keep]
    cap = ds.get("max_tokens_cap")
    if cap:
        rows = [replace(r, max_tokens=min(r.max_tokens, cap)) for r in rows]
    _check_rows(rows, member)
    manifest = {
        "member": member, "name": ds["name"], "synthetic": bool(ds["synthetic"]), "source": ds["source"],
        "source_sha256": files[0].sha256 if files else None,
        "source_files": [f.record() for f in files],
        "tokenizer": tokenizer, "bos_in_prompt_token_ids": False,
        "rule": result.rule, "seed": seed, "limit": ds.get("limit"), "max_tokens_cap": cap,
        "rows": len(rows), "rows_before_limit": before,
        "input_tokens": length_stats(len(r.prompt_token_ids) for r in rows),
        "output_tokens": length_stats(r.max_tokens for r in rows),
        "details": result.details,
    }
    return BuiltDataset(member, rows, manifest)


def _check_rows(rows: list[DatasetRow], member: str) -> None:
    if not rows:
        raise DatasetError(f"dataset {member}: no rows")
    seen: set[str] = set()
    for k, r in enumerate(rows):
        if r.id in seen:
            raise DatasetError(f"dataset {member}: row {k}: duplicate id {r.id!r}")
        seen.add(r.id)
        if not r.prompt_token_ids or r.max_tokens < 1:
            raise DatasetError(f"dataset {member}: row {k} ({r.id}): empty prompt or max_tokens < 1")


def write_dataset(built: BuiltDataset, rows_path: str | Path, manifest_path: str | Path,
                  provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write rows then manifest, each atomically; a stale manifest is removed first. Returns the manifest."""
    rows_path, manifest_path = Path(rows_path), Path(manifest_path)
    if manifest_path.exists():
        manifest_path.unlink()
    digest = hashlib.sha256()
    with atomic_path(rows_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in built.rows:
                line = json.dumps(r.to_json(), ensure_ascii=False) + "\n"
                digest.update(line.encode("utf-8"))
                fh.write(line)
    manifest = dict(built.manifest, rows_file=rows_path.name, rows_sha256=digest.hexdigest())
    if provenance is not None:
        manifest["provenance"] = dict(provenance)
    try:
        write_json(manifest_path, manifest)
    except BaseException:
        rows_path.unlink(missing_ok=True)
        raise
    return manifest


def build_and_write(cfg: Mapping[str, Any], rows_path: str | Path, manifest_path: str | Path) -> dict[str, Any]:
    """Build ``cfg['dataset']`` and write it with the job's provenance; returns the manifest."""
    from inference_eval.report.provenance import provenance, utc_now

    started = utc_now()
    built = build_dataset(cfg)
    return write_dataset(built, rows_path, manifest_path, provenance(cfg, started))
