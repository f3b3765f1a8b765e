"""Process accounting: every server the launcher starts carries a tag in its environment
(``launch.TAG_ENV``, inherited by its children). ``ProcessAudit`` notes our children and the tagged
processes before a piece of work and reports (and kills) any that are still alive after it. The
fault tests run every case under one; a harness can use it the same way."""

from __future__ import annotations

import time
import uuid

from inference_eval.serving.launch import tagged_processes


class ProcessAudit:
    def __init__(self, tag: str | None = None):
        import psutil

        self.tag = tag or f"ie-audit-{uuid.uuid4().hex[:10]}"
        self._me = psutil.Process()
        self.children_before = {p.pid for p in self._me.children(recursive=True)}
        self.tagged_before = tagged_processes(self.tag)

    def survivors(self, wait_s: float = 5.0, kill: bool = True) -> list[str]:
        """Tagged processes and new children still alive after up to ``wait_s`` (dying ones get that
        long to go). With ``kill``, they are killed after being listed."""
        import psutil

        deadline = time.monotonic() + wait_s
        while True:
            kids = set()
            for p in self._me.children(recursive=True):
                try:
                    if p.status() != psutil.STATUS_ZOMBIE:
                        kids.add(p.pid)
                except psutil.Error:
                    continue
            alive = set(tagged_processes(self.tag)) | (kids - self.children_before)
            if not alive or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        out = []
        for pid in sorted(alive):
            try:
                p = psutil.Process(pid)
                out.append(f"{pid}: {' '.join(p.cmdline())[:160]}")
                if kill:
                    p.kill()
            except psutil.Error:
                continue
        return out
