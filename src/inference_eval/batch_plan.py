"""What one batch run uses, decided before the worker starts: its requests, the dataset's facts, how many
repeats and how long it may take.

``load_plan`` reads ``rows.jsonl`` once per job: the parent keeps the plan for the record and hands the
requests to the worker in its job file (``job_requests`` / ``requests_from_job``), so both sides run and
describe exactly the same requests and the worker never parses the dataset again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from inference_eval.datasets.manifest import read_manifest
from inference_eval.requests import Request, apply_limits, load_requests

# Margin left inside the SLURM runtime so the record is written before the scheduler kills the job.
RUNTIME_MARGIN_S = 120


@dataclass
class BatchPlan:
    """One job's requests (first ``dataset.limit`` rows, ``max_tokens`` capped at
    ``dataset.max_tokens_cap``), the dataset's row count and its manifest (``{}`` where there is none)."""

    rows_path: Path
    requests: list[Request]
    dataset_rows: int
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def member(self) -> str:
        """The dataset member the rows belong to (their folder's name, e.g. ``s2s-synthetic``)."""
        return self.rows_path.parent.name


def load_plan(rows_path: str | Path, cfg: Mapping[str, Any]) -> BatchPlan:
    """Parse the dataset once (every row is checked: a bad row raises ``DatasetError`` naming its line)
    and read its manifest (``datasets.manifest.read_manifest``)."""
    rows = load_requests(rows_path)
    return BatchPlan(Path(rows_path), apply_limits(rows, dict(cfg)), len(rows), read_manifest(rows_path))


def job_requests(requests: Sequence[Request]) -> list[dict[str, Any]]:
    """The requests as the worker's job file carries them."""
    return [{"id": r.id, "prompt_token_ids": list(r.prompt_token_ids), "max_tokens": r.max_tokens,
             "prompt": r.prompt} for r in requests]


def requests_from_job(rows: Sequence[Mapping[str, Any]]) -> list[Request]:
    """``job_requests``' rows back as requests (in the worker)."""
    return [Request(str(r["id"]), tuple(r["prompt_token_ids"]), int(r["max_tokens"]), r.get("prompt", ""))
            for r in rows]


def worker_timeout_s(cfg: Mapping[str, Any]) -> float:
    """``scenario.timeout_s`` if set, else the hardware's SLURM runtime minus a margin for the record."""
    explicit = (cfg.get("scenario") or {}).get("timeout_s")
    if explicit:
        return float(explicit)
    runtime_min = ((cfg.get("hardware") or {}).get("slurm") or {}).get("runtime_min") or 60
    return max(60.0, float(runtime_min) * 60 - RUNTIME_MARGIN_S)


def batch_repeats(cfg: Mapping[str, Any], warmup: bool = False) -> int:
    """Timed runs of the dataset: ``scenario.repeats``, else the hardware's ``scale.batch_repeats``
    (3 on the GPU profiles, 1 on the CPU default), else 1. With ``warmup``: the untimed runs of the whole
    dataset before them, ``scenario.warmup_repeats``, else ``scale.batch_warmup_repeats``, else 0."""
    name, scale_name, default, least = (("warmup_repeats", "batch_warmup_repeats", 0, 0) if warmup
                                        else ("repeats", "batch_repeats", 1, 1))
    value = (cfg.get("scenario") or {}).get(name)
    key = f"scenario.{name}"
    if value is None:
        value = ((cfg.get("hardware") or {}).get("scale") or {}).get(scale_name)
        key = f"hardware.scale.{scale_name}"
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{key} must be an integer >= {least}, got {value!r}")
    return value
