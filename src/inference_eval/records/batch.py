"""The batch run record: ``results/<hw>/batch/<library>/<model>/<dataset>.json``, one per run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from inference_eval.records.base import Record, RecordError

# A SLURM failure record (inference_eval.slurm_failures) stands in for the batch record of a job SLURM
# killed: the job's wildcards, status and reason, read as a batch record without a result.
KINDS = ("batch", "slurm_failure")


@dataclass
class BatchRecord(Record):
    """One batch run (``inference_eval.batch.run_batch``): identity, status, counts, times, memory, the
    fairness manifest and provenance. A library that fails or is missing still has its record.

    Identity: ``kind`` ("batch"; "slurm_failure" for a SLURM failure record read in its place),
    ``library``, ``model``, ``dataset`` (the task: s2s, s2l, s16k, l2s), ``dataset_member`` (the built
    dataset's folder, e.g. ``s2s-synthetic``), ``dataset_source`` and ``synthetic`` (from the dataset's
    manifest, else its config), ``hardware``.

    Outcome: ``status`` (ok | invalid | failed | oom | timeout | not_installed | unsupported), ``reason``
    ("" when ok), ``failed_phase`` (import, dataset, load, warmup, generate, check; None when a result
    came), ``worker_exit`` (the worker process's exit code).

    Counts: ``n_requests`` (after ``dataset.limit``), ``dataset_rows`` (the whole dataset), ``input_tokens``,
    ``requested_output_tokens``, ``output_tokens`` (counted from token ids), ``n_exact`` (requests that
    generated exactly their ``max_tokens``), ``row_limit``, ``max_tokens_cap``.

    Times (seconds): ``total_time_s`` (mean over the timed repeats), ``repeats``, ``repeat_times_s``,
    ``total_time_ci95_lo_s`` / ``_hi_s`` (95 % Student-t interval), ``total_time_cv``; ``import_time_s``,
    ``load_time_s``, ``prepare_time_s`` (per-workload sizing), ``warmup_time_s`` (the short warm-up
    requests), ``warmup_repeats`` and ``warmup_repeats_time_s`` (untimed runs of the whole dataset),
    ``close_time_s``, ``exit_time_s`` (the worker's exit after its result), ``worker_wall_s``,
    ``harness_wall_s`` (the whole job in the harness).

    Rates: ``token_throughput_tok_s`` (output tokens / mean time) with ``token_throughput_ci95_lo_tok_s``
    / ``_hi_tok_s``, ``requests_per_s``. None unless the run produced a result (ok or invalid).

    Memory: ``peak_memory_gb`` (1e9 bytes) and ``peak_memory_kind`` (what was measured: the library's
    report, the CUDA allocator, NVML device memory or the process tree's resident memory).

    Energy (``inference_eval.telemetry``): ``energy_j`` (mean joules per timed repeat, NVML's counter),
    ``energy_j_per_token``, ``mean_power_w``, ``energy_reason`` (why they are empty: no GPU, no
    counter; "" when measured), ``telemetry`` (each repeat's window: power, SM clock, memory, utilisation).
    None in records made before energy was measured.

    ``library_versions`` (the library's packages), ``backend_stats`` (library-specific facts, e.g. how
    prompts were passed, padded tokens of static batches), ``fairness`` (the fairness manifest:
    ``inference_eval.fairness.manifest``, docs/fairness.md; None in records made before it),
    ``provenance`` (``report.provenance``: config and hash, versions, git, source hash, hardware, start
    and finish times).
    """

    VERSION_AFTER: ClassVar[str | None] = "kind"

    kind: str = "batch"
    library: str | None = None
    model: str | None = None
    dataset: str | None = None
    dataset_member: str | None = None
    dataset_source: str | None = None
    synthetic: bool | None = None
    hardware: str | None = None
    status: str | None = None
    reason: str = ""
    n_requests: int | None = None
    dataset_rows: int | None = None
    input_tokens: int | None = None
    requested_output_tokens: int | None = None
    output_tokens: int | None = None
    n_exact: int | None = None
    total_time_s: float | None = None
    repeats: int | None = None
    repeat_times_s: list[float] = field(default_factory=list)
    total_time_ci95_lo_s: float | None = None
    total_time_ci95_hi_s: float | None = None
    total_time_cv: float | None = None
    token_throughput_ci95_lo_tok_s: float | None = None
    token_throughput_ci95_hi_tok_s: float | None = None
    load_time_s: float | None = None
    token_throughput_tok_s: float | None = None
    requests_per_s: float | None = None
    peak_memory_gb: float | None = None
    peak_memory_kind: str | None = None
    row_limit: int | None = None
    max_tokens_cap: int | None = None
    import_time_s: float | None = None
    warmup_time_s: float | None = None
    warmup_repeats: int = 0
    warmup_repeats_time_s: float | None = None
    close_time_s: float | None = None
    exit_time_s: float | None = None
    worker_wall_s: float | None = None
    worker_exit: int | None = None
    failed_phase: str | None = None
    library_versions: dict[str, Any] = field(default_factory=dict)
    backend_stats: dict[str, Any] = field(default_factory=dict)
    prepare_time_s: float | None = None
    energy_j: float | None = None
    energy_j_per_token: float | None = None
    mean_power_w: float | None = None
    energy_reason: str | None = None
    telemetry: list[dict[str, Any]] | None = None
    fairness: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    harness_wall_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _upgrade_v1(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        data.setdefault("kind", "batch")  # the earliest records had no kind: batch was the only one
        if "repeats" not in data and data.get("total_time_s") is not None:
            data["repeats"] = 1  # records made before repeats existed ran the dataset once
        for key in ("repeat_times_s", "library_versions", "backend_stats", "provenance", "warmup_repeats"):
            if data.get(key) is None:
                data.pop(key, None)  # a null where today's writer puts [], {} or 0: the field's default
        return data

    @classmethod
    def _check(cls, data: Mapping[str, Any], source: str) -> None:
        if data.get("kind") not in KINDS:
            raise RecordError(f"{source}: not a batch record (kind {data.get('kind')!r}; expected one of "
                              f"{', '.join(KINDS)})")

    @property
    def has_result(self) -> bool:
        """Whether the run produced timed outputs to compare (status ok or invalid)."""
        return self.status in ("ok", "invalid")

    @property
    def settings(self) -> dict[str, Any]:
        """The effective engine settings of the fairness manifest ({} without one)."""
        return (self.fairness or {}).get("settings") or {}

    @classmethod
    def load(cls, path: str | Path) -> "BatchRecord":
        """Read a record file. ``OSError`` / ``json.JSONDecodeError`` for an unreadable file,
        ``RecordError`` (naming the file) for one that is not a batch record of a known version."""
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))

    def save(self, path: str | Path) -> None:
        """Write the record atomically (``inference_eval.io.write_json``)."""
        from inference_eval.io import write_json

        write_json(path, self.to_dict())
