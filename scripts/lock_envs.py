#!/usr/bin/env python3
"""Make the environment locks envs/<lock>.txt from their inputs envs/<engine>.in with `uv pip compile`.

    python scripts/lock_envs.py                 every lock (inference_eval.environments.LOCKS)
    python scripts/lock_envs.py llamacpp-cpu    some of them
    python scripts/lock_envs.py --print         only print the commands

Each lock is resolved for its target (Linux x86_64 manylinux_2_28, the lock's CPython), from what the
registry held at environments.EXCLUDE_NEWER. An existing lock's pins are kept where the inputs still allow
them (uv's preference for the output file's versions), so running this again reproduces the files (checked
by tests/test_environments.py) even where a registry's cached index pages differ from one hour to the next;
--upgrade resolves afresh. Use uv == environments.UV_VERSION (scripts/setup.sh installs it in .venv).
A lock that cannot be resolved (an index this machine cannot reach) is not overwritten when it already
says why (its first line is "NOT RESOLVED"); otherwise it is replaced by such a file with uv's error.
Exit status: 0 when every lock asked for was made, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from inference_eval.environments import (
    LOCKS,
    NOT_RESOLVED,
    UV_VERSION,
    compile_command,
    find_uv,
    lock_is_resolved,
    lock_path,
)
from inference_eval.io import write_text


def uv_env() -> dict[str, str]:
    # The target Python comes from --python-version; a managed interpreter download would only add
    # retries where the network reaches nothing but the registry.
    return dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1")


def compile_lock(name: str, uv: str, output: Path, prefer: Path | None = None) -> subprocess.CompletedProcess:
    """Run the lock's `uv pip compile` (from the repository root) into ``output``. With ``prefer`` (a lock
    file), uv starts from its pins and changes only those the inputs no longer allow."""
    if prefer is not None and prefer.exists() and lock_is_resolved(prefer.read_text(encoding="utf-8")):
        output.write_text(prefer.read_text(encoding="utf-8"), encoding="utf-8")
    return subprocess.run(compile_command(name, output, uv), cwd=REPO, capture_output=True, text=True,
                          env=uv_env(), timeout=1800)


def not_resolved_text(name: str, proc: subprocess.CompletedProcess, uv_version: str) -> str:
    shown = shlex.join(compile_command(name, lock_path(name).relative_to(REPO)))
    err = [ln for ln in (proc.stderr or "").splitlines() if ln.strip() and not ln.startswith("warning:")]
    lines = [f"# envs/{name}.txt: {NOT_RESOLVED}. This file holds no pins; it says why and how to make it.",
             "#", f"# Command run ({uv_version}, by scripts/lock_envs.py):", f"#   {shown}",
             f"# Result: exit status {proc.returncode},"] + [f"#   {ln}" for ln in err[-12:]] + [
             "#", f"# Make it on a machine that reaches the index named in envs/{LOCKS[name].source}:",
             f"#   python scripts/lock_envs.py {name}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("locks", nargs="*", help=f"lock names (default: all of {', '.join(LOCKS)})")
    p.add_argument("--print", action="store_true", help="print the commands, run nothing")
    p.add_argument("--upgrade", action="store_true",
                   help="resolve afresh (default: keep the committed pins that the inputs still allow)")
    args = p.parse_args(argv)
    names = args.locks or list(LOCKS)
    unknown = [n for n in names if n not in LOCKS]
    if unknown:
        p.error(f"unknown lock(s) {unknown}; known: {', '.join(LOCKS)}")
    if args.print:
        for n in names:
            print(shlex.join(compile_command(n)))
        return 0
    uv = find_uv()
    version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()
    if UV_VERSION not in version:
        print(f"lock_envs: {version} is not uv {UV_VERSION}: the locks may differ from the committed ones",
              file=sys.stderr)
    failed = 0
    for n in names:
        target = lock_path(n)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / target.name
            proc = compile_lock(n, uv, out, prefer=None if args.upgrade else target)
            if proc.returncode == 0:
                write_text(target, out.read_text(encoding="utf-8"))
                print(f"{n}: {target.relative_to(REPO)}")
                continue
        failed += 1
        first = next((ln for ln in proc.stderr.splitlines() if ln.startswith("error")), proc.stderr.strip()[-300:])
        if target.exists() and not lock_is_resolved(target.read_text(encoding="utf-8")):
            print(f"{n}: not resolved, {target.relative_to(REPO)} kept (it says why): {first}", file=sys.stderr)
        else:
            write_text(target, not_resolved_text(n, proc, version))
            print(f"{n}: not resolved, {target.relative_to(REPO)} now says why: {first}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
