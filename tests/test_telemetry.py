"""GPU telemetry (inference_eval.telemetry) driven by a fake NVML module: energy from the counter's
difference, samples for power and clocks, and empty values with a reason where nothing can be read."""

import time
from types import SimpleNamespace

import pytest

from inference_eval.telemetry import GpuTelemetry, energy_summary, nvml_device_index


class FakeNvml:
    """The pynvml calls the sampler makes; the energy counter advances 250 W worth of millijoules per second."""

    NVML_CLOCK_SM = 1

    def __init__(self, energy_counter=True, fail_init=False):
        self.energy_counter, self.fail_init = energy_counter, fail_init
        self.t0 = time.perf_counter()
        self.shutdown = False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetName(self, h):
        return b"Fake H200"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy_counter:
            raise RuntimeError("Not Supported")
        return 1_000_000 + int((time.perf_counter() - self.t0) * 250_000)

    def nvmlDeviceGetPowerUsage(self, h):
        return 250_000  # milliwatts

    def nvmlDeviceGetClockInfo(self, h, kind):
        assert kind == self.NVML_CLOCK_SM
        return 1980

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=3 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=97)

    def nvmlShutdown(self):
        self.shutdown = True


def test_window_energy_from_counter_and_samples():
    nvml = FakeNvml()
    with GpuTelemetry(nvml=nvml, interval_s=0.01) as t:
        time.sleep(0.2)
    w = t.window
    assert w.reason is None and w.source == "nvml_total_energy" and w.device == "Fake H200"
    assert w.energy_j == pytest.approx(250 * w.duration_s, rel=0.15)
    assert w.samples >= 5  # the thread sampled while the window ran
    assert w.mean_power_w == 250 and w.max_power_w == 250
    assert w.sm_clock_mhz_mean == 1980 and w.memory_used_gib_max == pytest.approx(3) and w.gpu_util_mean == 97
    assert nvml.shutdown


def test_no_counter_keeps_samples_and_says_why():
    with GpuTelemetry(nvml=FakeNvml(energy_counter=False), interval_s=0.01) as t:
        time.sleep(0.05)
    assert t.window.energy_j is None and "no NVML energy counter" in t.window.reason
    assert t.window.mean_power_w == 250
    assert energy_summary([t.window.to_dict()], 100)["energy_reason"].startswith("no NVML energy counter")


def test_unavailable_nvml_and_cpu_hardware_are_empty_with_reason():
    with GpuTelemetry(nvml=FakeNvml(fail_init=True)) as t:
        pass
    assert t.window.energy_j is None and "NVML Shared Library Not Found" in t.window.reason
    with GpuTelemetry(enabled=False) as t:
        pass
    summary = energy_summary([t.window.to_dict()], 100)
    assert summary == {"energy_j": None, "energy_j_per_token": None, "mean_power_w": None,
                       "energy_reason": "no GPU on this hardware"}


def test_energy_summary_means_over_windows():
    windows = [{"energy_j": 100.0, "mean_power_w": 200.0}, {"energy_j": 300.0, "mean_power_w": 400.0}]
    s = energy_summary(windows, output_tokens=1000)
    assert s == {"energy_j": 200.0, "energy_j_per_token": 0.2, "mean_power_w": 300.0, "energy_reason": ""}


@pytest.mark.parametrize("visible,index", [(None, 0), ("", 0), ("3", 3), (" 2,0", 2), ("GPU-8a1b", 0)])
def test_the_window_reads_the_first_visible_gpu(monkeypatch, visible, index):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert nvml_device_index() == index
    with GpuTelemetry(nvml=FakeNvml(), interval_s=0.01) as tel:
        assert tel._handle == ("gpu", index)
