"""Provenance for every run record: resolved config and hash, versions, git commit, hardware, times."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

from inference_eval import libraries
from inference_eval.config import config_hash
from inference_eval.config_roots import roots_of
from inference_eval.redaction import redact

# The harness's own distributions; each library's come from its registry entry (`packages:`).
HARNESS_PACKAGES = ("inference-eval", "torch", "snakemake", "hydra-core", "numpy", "gguf")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def package_names(cfg: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Distributions whose versions a record keeps: the harness's, every registered library's (the
    conf folders of ``cfg``), and the run's own library's ``packages`` as its job config carries them."""
    own = ((cfg or {}).get("library") or {}).get("packages") or ()
    roots = roots_of(cfg) if cfg else None
    return tuple(dict.fromkeys([*HARNESS_PACKAGES, *libraries.package_names(roots), *own]))


def package_versions(names: Iterable[str] | None = None) -> dict[str, str]:
    """Installed versions of ``names`` (default: ``package_names()``); absent distributions are left out."""
    out = {}
    names = package_names() if names is None else names
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit(repo: str | Path | None = None) -> dict[str, Any]:
    repo = Path(repo or Path(__file__).resolve().parents[3])
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    return {"commit": sha or None, "dirty": dirty if sha else None}


# What decides a run's behaviour besides its config and the libraries: the package and the workflow.
SOURCE_GLOBS = ("src/inference_eval/**/*.py", "conf/**/*.yaml", "rules/*.smk", "Snakefile", "workflow_scripts/*.py")


def source_digest(repo: str | Path | None = None) -> dict[str, Any]:
    """sha256 over the package's and the workflow's source files (relative path and bytes, in path
    order). Unlike the git commit, it names the code that ran where the checkout's git state does not
    (the lent GPU gets a copy of the working tree beside an older commit, so its records say "dirty");
    recompute it at a commit to check a record against it."""
    import hashlib

    repo = Path(repo or Path(__file__).resolve().parents[3])
    files = sorted({f for pattern in SOURCE_GLOBS for f in repo.glob(pattern)
                    if f.is_file() and "__pycache__" not in f.parts})
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(repo).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        data = f.read_bytes()
        h.update(len(data).to_bytes(8, "big") + data)
    return {"sha256": h.hexdigest() if files else None, "files": len(files)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> list[dict[str, str]]:
    fields = "name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    keys = fields.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.stdout.splitlines() if line.strip()]


def hardware_info() -> dict[str, Any]:
    from inference_eval.hardware import detect_hardware
    return {"detected": detect_hardware(), "host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "gpus": gpu_info(),
            "slurm": {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURMD_NODENAME")
                      if k in os.environ}}


def provenance(cfg: Mapping[str, Any], started: str | None = None, interpreter: str | None = None) -> dict[str, Any]:
    """With ``interpreter`` (the one that ran the library, ``environments.library_python``): ``versions``
    are that interpreter's, and ``environment`` says which it was (library.env, lock and its hash)."""
    safe = redact(cfg)
    out = {"config": safe, "config_hash": config_hash(safe), "versions": package_versions(package_names(cfg)), "git": git_commit(),
           "source": source_digest(), "hardware": hardware_info(), "started": started or utc_now(), "finished": utc_now()}
    if interpreter is not None:
        from inference_eval import environments

        out["environment"] = environments.describe(cfg, interpreter)
        if not environments.is_current(interpreter):
            out["versions"] = environments.interpreter_versions(interpreter, package_names(cfg)) or out["versions"]
    return out


# -- `inference-eval provenance`: what a record made from this checkout would carry ------------------
def add_arguments(p) -> None:
    p.add_argument("--repo", help="checkout to describe (default: the one this package runs from)")


def run(args) -> int:
    import json

    print(json.dumps({"source": source_digest(args.repo), "git": git_commit(args.repo)}, indent=2))
    return 0
