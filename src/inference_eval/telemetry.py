"""GPU energy and telemetry over a timed window (a batch repeat, a serving rate).

On NVIDIA GPUs the window reads NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
millijoules since the driver loaded) at its start and end, and a background thread samples power, SM
clock, memory used and utilisation every ``interval_s``. The energy is the counter's difference, not
an integral of the samples: the counter is the driver's own accumulation and misses nothing between
samples; the samples give the mean and peak power and what the clocks did.

Where there is no counter (a CPU machine, no NVML library, a GPU without the counter), every value is
None and ``reason`` says why: a table then shows an empty cell with that reason, never a zero.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

SAMPLE_INTERVAL_S = 0.1
# The energy columns of a serving row (a batch record has the first four and its windows' list).
ENERGY_COLUMNS = ("energy_j", "energy_j_per_token", "mean_power_w", "energy_reason", "gpu_sm_clock_mhz_mean",
                  "gpu_memory_used_gib_max", "gpu_util_mean", "telemetry_samples")


@dataclass
class TelemetryWindow:
    """What one timed window measured. Energies in joules, power in watts, memory in GiB."""

    energy_j: float | None = None
    duration_s: float | None = None
    mean_power_w: float | None = None
    max_power_w: float | None = None
    sm_clock_mhz_mean: float | None = None
    sm_clock_mhz_min: float | None = None
    memory_used_gib_max: float | None = None
    gpu_util_mean: float | None = None
    samples: int = 0
    device: str | None = None
    source: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_nvml():
    """NVML's Python bindings (the ``nvidia-ml-py`` distribution installs the ``pynvml`` module)."""
    import pynvml

    return pynvml


def nvml_device_index() -> int:
    """NVML's index of the first GPU this process sees: CUDA_VISIBLE_DEVICES names NVML indices (when they
    are numbers; otherwise, and when it is unset, 0). The telemetry here and the batch supervisor's memory
    sampler (``batch_watch``) both read this device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(visible) if visible.isdigit() else 0


@dataclass
class _Samples:
    power_w: list[float] = field(default_factory=list)
    sm_mhz: list[float] = field(default_factory=list)
    mem_gib: list[float] = field(default_factory=list)
    util: list[float] = field(default_factory=list)


class GpuTelemetry:
    """Context manager around one timed window; ``window`` holds the result after it exits.

    ``enabled=False`` (CPU hardware) skips NVML and records the reason. ``nvml`` replaces the bindings
    (unit tests drive the sampler with a fake module).
    """

    def __init__(self, enabled: bool = True, interval_s: float = SAMPLE_INTERVAL_S, nvml=None,
                 disabled_reason: str = "no GPU on this hardware"):
        self.enabled = enabled
        self.interval_s = interval_s
        self._nvml = nvml
        self._disabled_reason = disabled_reason
        self._handle = None
        self._start_mj: int | None = None
        self._t0 = 0.0
        self._samples = _Samples()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.window = TelemetryWindow()

    def __enter__(self) -> GpuTelemetry:
        if not self.enabled:
            self.window = TelemetryWindow(reason=self._disabled_reason)
            return self
        try:
            nvml = self._nvml or _load_nvml()
            nvml.nvmlInit()
            self._nvml = nvml
            self._handle = nvml.nvmlDeviceGetHandleByIndex(nvml_device_index())
            name = nvml.nvmlDeviceGetName(self._handle)
            self.window.device = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as exc:  # no bindings, no driver, no device: the window says why
            self._handle = None
            self.window = TelemetryWindow(reason=f"NVML unavailable: {type(exc).__name__}: {exc}")
            return self
        try:
            self._start_mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            self.window.source = "nvml_total_energy"
        except Exception as exc:  # pre-Volta GPUs have no energy counter; samples still run
            self._start_mj = None
            self.window.reason = f"no NVML energy counter on this GPU: {type(exc).__name__}: {exc}"
        self._t0 = time.perf_counter()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="gpu-telemetry", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        nvml, h, s = self._nvml, self._handle, self._samples
        for target, read in ((s.power_w, lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1e3),
                             (s.sm_mhz, lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))),
                             (s.mem_gib, lambda: nvml.nvmlDeviceGetMemoryInfo(h).used / 2**30),
                             (s.util, lambda: float(nvml.nvmlDeviceGetUtilizationRates(h).gpu))):
            try:
                target.append(read())
            except Exception:  # a reading this GPU does not give stays out of its mean
                pass

    def __exit__(self, *exc_info) -> None:
        if self._handle is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 1)
        self._sample()
        duration = time.perf_counter() - self._t0
        w, s = self.window, self._samples
        w.duration_s = duration
        if self._start_mj is not None:
            try:
                w.energy_j = (int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) - self._start_mj) / 1e3
            except Exception as exc:
                w.reason = f"NVML energy counter failed at the window's end: {exc}"
        w.samples = len(s.power_w)
        w.mean_power_w = _mean(s.power_w)
        w.max_power_w = max(s.power_w) if s.power_w else None
        w.sm_clock_mhz_mean = _mean(s.sm_mhz)
        w.sm_clock_mhz_min = min(s.sm_mhz) if s.sm_mhz else None
        w.memory_used_gib_max = max(s.mem_gib) if s.mem_gib else None
        w.gpu_util_mean = _mean(s.util)
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def energy_summary(windows: list[dict], output_tokens: int) -> dict[str, Any]:
    """Per-row energy columns from the windows of its timed runs (each of ``output_tokens`` tokens):
    mean joules per run and per output token, mean power; empty with the reason where none measured."""
    measured = [w for w in windows if w.get("energy_j") is not None]
    if not measured:
        reasons = sorted({w.get("reason") or "not measured" for w in windows}) or ["not measured"]
        return {"energy_j": None, "energy_j_per_token": None, "mean_power_w": None,
                "energy_reason": "; ".join(reasons)}
    energy = sum(w["energy_j"] for w in measured) / len(measured)
    powers = [w["mean_power_w"] for w in measured if w.get("mean_power_w") is not None]
    return {"energy_j": energy, "energy_j_per_token": energy / output_tokens if output_tokens else None,
            "mean_power_w": sum(powers) / len(powers) if powers else None, "energy_reason": ""}
