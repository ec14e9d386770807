"""A progress bar for long jobs (catalog import, re-embed, sync drain) on a terminal; plain
periodic lines when the output is a log file, so cron and journald stay readable."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.label = label
        self.done = 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self._last >= (0.1 if self._tty else 5.0):
            self._last = now
            self._draw(note)

    def close(self) -> None:
        self._draw("")
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def _draw(self, note: str) -> None:
        width = 30
        filled = width * self.done // self.total if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        elapsed = time.monotonic() - self._start
        line = f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:.1f}s {note}".rstrip()
        if self._tty:
            self._stream.write("\r\x1b[K" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
