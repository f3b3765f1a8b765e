"""Roofline ceilings (peak FLOP/s, memory bandwidth, memory size) from a hardware profile.

A profile (conf/hardware/*.yaml) gives datasheet figures (``bandwidth_gbs``, ``peak_tflops_bf16``)
and, where someone measured them on the machine, ``measured: {bandwidth_gbs, peak_tflops_bf16}``.
Measured values win; ``Ceilings.source`` says which figure each ceiling came from, and every output
carries it. For tensor parallelism the profile also gives ``gpus`` and ``interconnect_gbs`` (GPU-to-GPU
bandwidth per direction; ``measured.interconnect_gbs`` wins there too), the ceiling of the all-reduce
term (``theory.parallel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from inference_eval.theory.ops import TheoryError

# The peak key a dtype's matmuls run at; fp16 and bf16 tensor-core peaks are equal on these GPUs.
PEAK_KEYS = {"bfloat16": "peak_tflops_bf16", "bf16": "peak_tflops_bf16", "float16": "peak_tflops_fp16",
             "fp16": "peak_tflops_fp16", "float32": "peak_tflops_fp32", "fp32": "peak_tflops_fp32",
             "fp8": "peak_tflops_fp8", "float8": "peak_tflops_fp8", "int8": "peak_tflops_int8"}
FALLBACK_PEAK_KEY = "peak_tflops_bf16"


@dataclass(frozen=True)
class Ceilings:
    hardware: str
    peak_flops: float        # FLOP/s
    bandwidth: float         # bytes/s
    memory_bytes: float
    source: str              # e.g. "measured bandwidth_gbs=3000; measured peak_tflops_bf16=796"
    interconnect: float | None = None   # bytes/s per direction between two GPUs; None: not given
    interconnect_source: str = ""       # e.g. "datasheet interconnect_gbs=450"
    gpus: int = 1

    def link_time(self, link_bytes):
        """Seconds to move ``link_bytes`` over one GPU's link (0 bytes: 0 s, with or without a link)."""
        link = np.asarray(link_bytes, dtype=float)
        if not np.any(link > 0):
            return link * 0.0
        if not self.interconnect:
            raise TheoryError(f"hardware '{self.hardware}': a tensor-parallel bound needs interconnect_gbs "
                              f"(GPU-to-GPU bandwidth per direction) in conf/hardware/{self.hardware}.yaml")
        return link / self.interconnect

    @property
    def ridge_point(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which an op is compute-bound."""
        return self.peak_flops / self.bandwidth


def _positive(hw: Mapping[str, Any], section: Mapping[str, Any], key: str) -> float | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise TheoryError(f"hardware '{hw.get('name')}': {key} must be a positive number, got {value!r}")
    return float(value)


def _pick(hw: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[float, str]:
    """The first of ``keys`` found, measured before datasheet; (value, 'measured key=value')."""
    measured = hw.get("measured") or {}
    for origin, section in (("measured", measured), ("datasheet", hw)):
        for key in keys:
            value = _positive(hw, section, key)
            if value is not None:
                return value, f"{origin} {key}={value:g}"
    raise TheoryError(f"hardware '{hw.get('name')}': none of {', '.join(keys)} is given (measured or datasheet) "
                      f"in conf/hardware/{hw.get('name')}.yaml")


def ceilings(hw_cfg: Mapping[str, Any], dtype: str = "bfloat16") -> Ceilings:
    """Ceilings of the ``hardware`` section of a resolved config for matmuls in ``dtype``."""
    name = str(hw_cfg.get("name") or "<unnamed>")
    bandwidth, bw_src = _pick(hw_cfg, ("bandwidth_gbs",))
    peak_key = PEAK_KEYS.get(dtype, FALLBACK_PEAK_KEY)
    keys = (peak_key,) if peak_key == FALLBACK_PEAK_KEY else (peak_key, FALLBACK_PEAK_KEY)
    peak, peak_src = _pick(hw_cfg, keys)
    if not peak_src.split()[1].startswith(peak_key):
        peak_src += f" (no {peak_key} in the profile; {dtype} model uses the bf16 peak)"
    memory = _positive(hw_cfg, hw_cfg, "memory_gb")
    if memory is None:
        raise TheoryError(f"hardware '{name}': memory_gb missing in conf/hardware/{name}.yaml")
    try:
        link, link_src = _pick(hw_cfg, ("interconnect_gbs",))
    except TheoryError:  # no interconnect: fine for one GPU (Ceilings.link_time says so for more)
        link, link_src = None, ""
    gpus = hw_cfg.get("gpus")
    gpus = int(gpus) if gpus is not None else (1 if hw_cfg.get("kind") == "gpu" else 0)
    return Ceilings(hardware=name, peak_flops=peak * 1e12, bandwidth=bandwidth * 1e9, memory_bytes=memory * 1e9,
                    source=f"{bw_src}; {peak_src}", interconnect=None if link is None else link * 1e9,
                    interconnect_source=link_src, gpus=gpus)
