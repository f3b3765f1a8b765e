"""Which interpreter runs a library's jobs (``library.env`` resolved by ``resolve``; ``library_python`` is
the one place that decides), the environment its child processes get, and what that interpreter has
installed (asked by running it when it is another environment's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from inference_eval.environments.locks import DEFAULT_ENVS_DIR, LOCKS, REPO, lock_path, lock_sha

STATUS_FILE = "env.json"


class EnvironmentFailed(RuntimeError):
    """A library's environment cannot give an interpreter (its build failed, it was not built, its
    interpreter is missing); the message says which environment and why."""



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



def env_targets(cfgs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The ``env.json`` files of the given job configs' libraries (each once)."""
    out = []
    for cfg in cfgs:
        path = status_path(cfg)
        if path is not None and str(path) not in out:
            out.append(str(path))
    return out
