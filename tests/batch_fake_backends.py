"""Backends that misbehave on purpose, for the batch harness's own tests (never used by the pipeline).

They run inside the real worker process (``library.backend: batch_fake_backends:<Class>``); the
harness must turn each misbehaviour into a record. ``library.fault`` picks what ``generate`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from inference_eval.backends.base import Backend, BackendUnavailable
from inference_eval.requests import Completion


class CountingBackend(Backend):
    """Returns ``max_tokens`` ids per request (minus one for every other request when ``short``)."""

    name = "counting"

    def load(self) -> None:
        self.short = bool(self.cfg["library"].get("short", False))

    def generate(self, requests):
        out = []
        for i, r in enumerate(requests):
            n = r.max_tokens - 1 if self.short and i % 2 == 1 else r.max_tokens
            out.append(Completion(id=r.id, output_token_ids=list(range(100, 100 + n)),
                                  requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len))
        return out

    def versions(self):
        return {"counting": "test"}


class FaultyBackend(CountingBackend):
    """``library.fault``: exit | segv | sigkill | memoryerror | torch_oom | raise | hang | orphan."""

    name = "faulty"

    def generate(self, requests):
        fault = self.cfg["library"]["fault"]
        if fault == "exit":
            os._exit(3)
        if fault == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if fault == "sigkill":  # what the kernel's OOM killer does
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "memoryerror":
            raise MemoryError("cannot allocate 64 GiB for the KV cache")
        if fault == "torch_oom":
            import torch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if fault == "raise":
            raise RuntimeError("the library broke")
        if fault == "hang":
            time.sleep(3600)
        if fault == "orphan":  # a library helper process left behind by a dying worker
            helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            with open(self.cfg["library"]["pid_file"], "w") as fh:
                fh.write(str(helper.pid))
            os._exit(1)
        raise ValueError(f"unknown fault {fault!r}")


class MissingLibraryBackend(CountingBackend):
    name = "missing"

    @classmethod
    def check_available(cls) -> None:
        raise BackendUnavailable("fakelib is not installed (pip install fakelib)")
