"""Logging that a flood cannot turn into a full disk.

A hostile CSMS can send thousands of bad frames a second; each deserves a warning, but the
journal must not fill with them. A rate-limited logger writes the first occurrence of each
kind, then at most one line per interval saying how many more there were.
"""

from __future__ import annotations

import logging
import time


class RateLimited:
    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self._log = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) > 256:  # bounded: keys come from a fixed set, but be safe
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            message += " (%d more like it since the last report)"
            args = (*args, skipped)
        self._log.log(level, message, *args)

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def error(self, key: str, message: str, *args: object) -> None:
        self.log(logging.ERROR, key, message, *args)
