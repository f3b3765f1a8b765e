"""The one interface every library implements for the batch scenario: load, generate, close.

A backend receives token-id prompts with per-request output lengths and must return, per request,
the generated token ids (EOS ignored, exactly ``max_tokens`` of them). The harness around it
(``inference_eval.batch``) times only ``generate``, checks the lengths and writes the record.
"""

from __future__ import annotations

import abc
import importlib
import sys
from typing import Any, Sequence

from inference_eval.models.files import ModelFiles
from inference_eval.requests import Completion, Request


class BackendUnavailable(RuntimeError):
    """The library is not installed or cannot run on this hardware; the message says why."""

    status = "not_installed"


class BackendUnsupported(RuntimeError):
    """The library is installed but cannot run this configuration (the paper's '-' cells)."""

    status = "unsupported"


class Backend(abc.ABC):
    name: str = ""

    def __init__(self, cfg: dict, files: ModelFiles):
        """``cfg`` is the job's resolved config (``cfg['library']``, ``cfg['model']``, ``cfg['hardware']``)."""
        self.cfg = cfg
        self.files = files
        # Library-specific facts the run record keeps (e.g. how prompts were passed, threads used).
        self.stats: dict[str, Any] = {}

    @classmethod
    def check_available(cls) -> None:
        """Raise ``BackendUnavailable`` with the reason if the library cannot be imported here."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model; not timed as generation (recorded as load time)."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Generate exactly ``r.max_tokens`` tokens for every request, EOS ignored; return ids."""

    def prepare(self, requests: Sequence[Request]) -> None:
        """Size per-workload settings before the timed call (untimed). Called after ``load`` with the
        requests the timed ``generate`` will get (e.g. Transformers' ``batch_size: auto``); nothing by default."""

    def synchronize(self) -> None:
        """Wait for the device to finish queued work (timing boundaries)."""
        torch = sys.modules.get("torch")  # a library that never imported torch has nothing to sync
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()

    def peak_memory_gb(self) -> float | None:
        """Peak device memory during the run, where the library lets us read it."""
        return None

    def versions(self) -> dict[str, Any]:
        return {}

    def resolved_settings(self) -> dict[str, Any]:
        """The fairness settings (``inference_eval.fairness.SETTING_KEYS``) as the loaded engine reports
        them; ``{}`` where it reports nothing (then the manifest keeps what was asked for)."""
        return {}

    def close(self) -> None:
        """Release the model and device memory."""


def load_backend_class(spec: str) -> type[Backend]:
    """``'package.module:ClassName'`` from ``cfg['library']['backend']``."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
