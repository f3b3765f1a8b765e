"""The module row: one op at one shape and stage, one row of ``results/<hw>/modules/<library>_<stage>_<sweep>.csv``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from inference_eval.records.base import Record, RecordError, checked_table


@dataclass
class ModuleRow(Record):
    """One op's measured time at one (b, s) point and stage, beside its theory (``profiling.sweep.summarize``).

    Identity: ``library`` (the profiled variant: transformers-eager, transformers-sdpa, vllm), ``model``,
    ``hardware``, ``b`` (batch), ``s`` (sequence length; decode runs at context s + 1), ``stage``
    (prefill, decode), ``op`` (``inference_eval.opnames``), ``sweep`` (seq or batch: the sweep line the
    table belongs to), ``status`` (ok, or why the library could not be profiled) and ``reason``.

    Measured: ``time_s`` (all decoder layers of one forward, mean over ``repeats``), ``time_median_s``,
    ``time_std_s``, ``repeats``, ``share`` (of the stage's time at that point), ``stage_time_s``,
    ``time_per_layer_s`` (``time_s`` / ``layers``), ``layers``, ``time_source`` (device kernels or CPU
    operators).

    Theory, per layer (``inference_eval.theory``): ``theory_flops``, ``theory_bytes`` under ``byte_model``
    (fused or unfused, how this variant moves the op's data), ``theory_bytes_fused``,
    ``theory_bytes_unfused``, ``roofline_time_s`` with the ``ceilings`` it used, and
    ``achieved_fraction`` (``roofline_time_s`` / ``time_per_layer_s``).

    Nsight Compute, for one layer where it ran (GPU profiles): ``dram_read_bytes``, ``dram_write_bytes``,
    ``dram_bytes``, ``ncu_time_s``, ``ncu_kernels``, ``ncu_layer``, ``measured_intensity``
    (``theory_flops`` / ``dram_bytes``). A row of a library that could not be profiled has only its
    identity, status and reason.
    """

    library: str | None = None
    model: str | None = None
    hardware: str | None = None
    b: int | None = None
    s: int | None = None
    stage: str | None = None
    op: str | None = None
    time_s: float | None = None
    time_median_s: float | None = None
    time_std_s: float | None = None
    repeats: int | None = None
    share: float | None = None
    stage_time_s: float | None = None
    time_per_layer_s: float | None = None
    theory_flops: float | None = None
    theory_bytes: float | None = None
    byte_model: str | None = None
    theory_bytes_fused: float | None = None
    theory_bytes_unfused: float | None = None
    roofline_time_s: float | None = None
    ceilings: str | None = None
    achieved_fraction: float | None = None
    dram_read_bytes: float | None = None
    dram_write_bytes: float | None = None
    dram_bytes: float | None = None
    ncu_time_s: float | None = None
    ncu_kernels: float | None = None
    ncu_layer: float | None = None
    measured_intensity: float | None = None
    layers: int | None = None
    time_source: str | None = None
    sweep: str | None = None
    status: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _check(cls, data, source: str) -> None:
        if "status" not in data:
            raise RecordError(f"{source}: not a module row (no status)")


def rows_frame(rows: Iterable[ModuleRow]):
    """The rows as a module table holds them: the fields in order, without the columns no row has (the
    Nsight Compute columns where it did not run; the measurements of a library that was not profiled)."""
    import pandas as pd

    dicts = [r.to_dict() for r in rows]
    keep = [c for c in ModuleRow.columns() if any(d.get(c) is not None for d in dicts)]
    return pd.DataFrame(dicts, columns=keep)


def read_module_table(path: str | Path) -> list[ModuleRow]:
    """The rows of a module table, each checked (``RecordError`` naming the file and row)."""
    return [ModuleRow.from_dict(r, source=f"{path} row {i + 1}")
            for i, r in enumerate(checked_table(path).to_dict("records"))]
