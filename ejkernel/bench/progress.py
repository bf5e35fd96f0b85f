"""A dependency-free progress bar on stderr: redrawn in place on a terminal, one line per step otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``bar(done, total, label)`` draws ``[#####.....] done/total elapsed label``."""

    def __init__(self, stream: TextIO | None = None, width: int = 30, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = enabled
        self.started = time.perf_counter()
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {done}/{total} {time.perf_counter() - self.started:6.1f}s {label}"
        if self.interactive:
            end = "\n" if done >= total else ""
            self.stream.write("\r\033[K" + line[:160] + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
