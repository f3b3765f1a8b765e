"""Building one lock's environment (``build_env``, a node of the DAG in ``rules/envs.smk``): ``uv venv``,
``uv pip sync`` of the lock, the package itself added editable, and a check that the engine's modules are
found; ``env.json`` says whether it worked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from inference_eval.environments.interpreter import EnvironmentFailed
from inference_eval.environments.locks import (
    DEFAULT_ENVS_DIR,
    NOT_RESOLVED,
    REPO,
    UV_VERSION,
    lock_is_resolved,
    lock_path,
    lock_sha,
    lock_spec,
)

TAIL_LINES = 12                        # installer lines an env_failed reason carries


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
