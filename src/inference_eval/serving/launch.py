"""Start a library's server as its own process group on loopback, wait until it is healthy, stream its
log into the run folder, and always stop the whole group: on success, on failure, on Ctrl-C and on
SIGTERM (``inference_eval.termination``). A server that exits early, never gets healthy or cannot bind its
port fails with ``ServerError`` carrying the tail of its log. Starting and ending the group, and the
server's death with a launcher that dies without cleaning up, are ``inference_eval.processes``'.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from inference_eval import processes
from inference_eval.serving.servers import LaunchCommand

# Every process we start carries this in its environment (inherited by its children), so a test or
# a cleanup pass can find survivors precisely, whoever their parent has become.
TAG_ENV = "INFERENCE_EVAL_SERVER_TAG"
STOP_GRACE_S = 10.0


class ServerError(RuntimeError):
    """The server could not be started, or exited, or never became healthy."""


class PortInUseError(ServerError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (bind to 0). Another process may still take it before the server
    binds; ``ServerProcess`` then reports the server's bind failure and retries on a new port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PortInUseError(f"port {host}:{port} is already in use ({exc.strerror}); choose another port "
                                 f"or leave it unset to take a free one") from None


def _redacted_argv(cmd: LaunchCommand, api_key: str | None) -> list[str]:
    return ["<redacted>" if api_key and api_key in a else a for a in cmd.argv]


@dataclass
class ServerProcess:
    """A running server. Use as a context manager, or call ``stop()`` in a ``finally``."""

    proc: subprocess.Popen
    host: str
    port: int
    log_path: Path
    argv_logged: list[str]

    @property
    def pgid(self) -> int:
        return self.proc.pid  # processes.start_group: the leader's pid is the group id

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def returncode(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, n_chars: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - n_chars))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def group_alive(self) -> bool:
        return processes.group_alive(self.pgid)

    def stop(self, grace_s: float = STOP_GRACE_S) -> processes.Ending:
        """SIGTERM the whole group, wait ``grace_s``, then SIGKILL it; reap the leader
        (``processes.end_group``). Returns how the group ended, which the log's last line also says."""
        ending = processes.end_group(self.proc, grace_s)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"\n# [inference-eval] server group {self.pgid} stopped (exit {self.proc.returncode}, "
                     f"{ending.value})\n")
        return ending

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _http_status(url: str, timeout: float, api_key: str | None) -> int | None:
    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


_BIND_ERRORS = ("address already in use", "errno 98", "only one usage of each socket address")


def start_server(cmd_for_port, log_path: str | Path, *, host: str = "127.0.0.1", port: int | None = None,
                 health_path: str = "/health", health_timeout_s: float = 300.0, api_key: str | None = None,
                 bind_retries: int = 3, tag: str | None = None) -> ServerProcess:
    """Launch ``cmd_for_port(port) -> LaunchCommand`` and wait for ``GET health_path`` to answer 200.

    ``port=None`` takes a free port (retrying on a bind race); a given port must be free or
    ``PortInUseError`` is raised before anything starts. On any failure the group is stopped and
    ``ServerError`` says why, with the log's tail.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else max(1, bind_retries)
    last_error: ServerError | None = None
    for attempt in range(attempts):
        chosen = port if port is not None else free_port(host)
        if port is not None:
            check_port_free(host, chosen)
        try:
            return _start_once(cmd_for_port(chosen), log_path, host, chosen, health_path, health_timeout_s,
                               api_key, tag, attempt)
        except ServerError as exc:
            last_error = exc
            if port is not None or not any(s in str(exc).lower() for s in _BIND_ERRORS):
                raise
    assert last_error is not None
    raise last_error


def _start_once(cmd: LaunchCommand, log_path: Path, host: str, port: int, health_path: str,
                health_timeout_s: float, api_key: str | None, tag: str | None, attempt: int) -> ServerProcess:
    env = dict(os.environ)
    env.update(cmd.env)
    # an outer tag (a test, an outer harness) wins, so that whoever started us can find our servers
    env[TAG_ENV] = os.environ.get(TAG_ENV) or tag or f"ie-{os.getpid()}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    shown = _redacted_argv(cmd, api_key)
    env_shown = {k: ("<redacted>" if k in cmd.secret_env else v) for k, v in cmd.env.items()}
    mode = "w" if attempt == 0 else "a"
    with open(log_path, mode, encoding="utf-8") as fh:
        fh.write(f"# [inference-eval] {time.strftime('%Y-%m-%dT%H:%M:%S')} attempt {attempt + 1}: "
                 f"{' '.join(shown)}\n# [inference-eval] env: {env_shown}\n")
    log_fh = open(log_path, "ab", buffering=0)
    try:
        proc = processes.start_group(cmd.argv, die_with_parent=True, stdin=subprocess.DEVNULL, stdout=log_fh,
                                     stderr=subprocess.STDOUT, env=env, close_fds=True)
    except OSError as exc:
        log_fh.close()
        raise ServerError(f"cannot start {cmd.argv[0]!r}: {exc}") from exc
    log_fh.close()  # the child holds its own descriptor; the OS streams its output to the file
    server = ServerProcess(proc, host, port, log_path, shown)
    try:
        _wait_healthy(server, health_path, health_timeout_s, api_key)
    except BaseException:
        server.stop(grace_s=5.0)
        raise
    return server


def _wait_healthy(server: ServerProcess, health_path: str, timeout_s: float, api_key: str | None) -> None:
    url = server.base_url + health_path
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        code = server.returncode()
        if code is not None:
            raise ServerError(f"server exited with code {code} before becoming healthy "
                              f"(log {server.log_path}):\n{server.log_tail()}")
        last = _http_status(url, timeout=2.0, api_key=api_key)
        if last == 200:
            return
        if time.monotonic() >= deadline:
            raise ServerError(f"server did not become healthy within {timeout_s:g}s (GET {url} -> "
                              f"{last if last is not None else 'no answer'}; log {server.log_path}):\n"
                              f"{server.log_tail()}")
        time.sleep(0.25)


def tagged_processes(tag: str) -> list[int]:
    """PIDs of live processes whose environment carries ``TAG_ENV=tag`` (readable ones only)."""
    import psutil
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(TAG_ENV) == tag and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return out
