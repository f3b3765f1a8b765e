"""Which launcher a library gets: ``server_spec`` by name or from a job config, ``server_for`` of a
registry entry, ``SERVERS`` (every library that serves, and ``loopback``).

A launcher (``serving.launcher.ServerSpec``) is made from the library's registry entry (``server:`` of
``conf/library/<name>.yaml``); the entry's ``server.launcher`` names a subclass with the engine's own
behaviour (``serving.engine_servers``; re-exported here, where the registry entries name them).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator, Mapping

from inference_eval import libraries
from inference_eval.serving.engine_servers import (
    LlamaCppServer,
    LoopbackServer,
    MiiServer,
    TransformersServer,
    TrtLlmServer,
    VllmServer,
)
from inference_eval.serving.launcher import LaunchCommand, NoServer, ServerSpec

# The engines' launchers by the names the registry entries give (``server.launcher``), and what the
# sweep, the CLI and the launcher of processes (serving.launch) import from here.
__all__ = ["SERVERS", "LaunchCommand", "LlamaCppServer", "LoopbackServer", "MiiServer", "NoServer", "ServerSpec",
           "TransformersServer", "TrtLlmServer", "VllmServer", "server_for", "server_spec"]


def server_for(library: libraries.Library) -> ServerSpec:
    """The launcher of a registry entry: its ``launcher`` class, the generic one, or ``NoServer``."""
    return _spec(library.name, library.server, library.unsupported_reason)


def _spec(name: str, server: libraries.Server | None, reason: str) -> ServerSpec:
    if server is None:
        return NoServer(name, reason)
    if not server.launcher:
        return ServerSpec(server, library=name)
    module, _, cls_name = server.launcher.partition(":")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as exc:
        raise libraries.LibraryConfigError(f"library {name!r}: server.launcher {server.launcher!r} cannot be "
                                           f"loaded: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, ServerSpec)):
        raise libraries.LibraryConfigError(f"library {name!r}: server.launcher {server.launcher!r} is not a "
                                           "ServerSpec subclass (inference_eval.serving.servers)")
    return cls(server, library=name)


def server_spec(library: str | Mapping[str, Any]) -> ServerSpec:
    """The launcher of a library: by name (the package's registry, or ``loopback``), or from a job
    config's ``cfg['library']`` (its ``server:`` block, so libraries of ``conf_path`` folders serve too)."""
    if isinstance(library, Mapping):
        name = str(library.get("name") or "")
        server, reason = libraries.parse_server(library.get("server"), name, str(library.get("label") or name),
                                                where=f"library {name!r} of the job config")
        return _spec(name, server, reason)
    if library == "loopback":
        return LoopbackServer()
    try:
        return server_for(libraries.library(library))
    except libraries.LibraryConfigError:
        raise KeyError(f"no serving launcher for library {library!r}; known: {', '.join(sorted(SERVERS))}") from None


class _Servers(Mapping):
    """Launcher factories by name: every library of the package's registry that serves, and ``loopback``.
    Read from the registry when first used."""

    def _names(self) -> list[str]:
        return [n for n, lib in libraries.registry().items() if lib.serves] + ["loopback"]

    def __getitem__(self, name: str) -> Callable[[], ServerSpec]:
        if name not in self._names():
            raise KeyError(name)
        return lambda: server_spec(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


SERVERS: Mapping[str, Callable[[], ServerSpec]] = _Servers()
