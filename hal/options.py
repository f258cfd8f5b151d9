"""Reading a driver's options from its config table, with installer-grade error messages.

Every driver takes the keys of its `[hardware.<device>]` table (less `driver`) as a dict and
reads them through `Options`; all problems are collected and raised together, each naming the
option, the bad value and what is allowed, e.g. `port: must be a serial device path like
/dev/ttyUSB0 (got 'COM3')`. The config loader prefixes them with `hardware.<device>.`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

_MISSING = object()


class DriverConfigError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Options:
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = dict(options)
        self._seen: set[str] = {"driver"}
        self.errors: list[str] = []

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        value = self._options.get(key, default)
        if value is _MISSING:
            self.errors.append(f"{key}: required")
        return value

    def text(self, key: str, default: Any = _MISSING, *, max_length: int = 200) -> Any:
        value = self._get(key, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if not isinstance(value, str) or not value.strip() or len(value) > max_length:
            self.errors.append(f"{key}: must be text of 1 to {max_length} characters "
                               f"(got {_show(value)})")
            return None
        return value

    def integer(self, key: str, default: Any = _MISSING, *, low: int, high: int) -> Any:
        value = self._get(key, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.errors.append(f"{key}: must be a whole number from {low} to {high} "
                               f"(got {_show(value)})")
            return None
        return value

    def number(self, key: str, default: Any = _MISSING, *, low: float, high: float) -> Any:
        value = self._get(key, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
            low <= value <= high
        ):
            self.errors.append(f"{key}: must be a number from {low:g} to {high:g} "
                               f"(got {_show(value)})")
            return None
        return float(value)

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if not isinstance(value, bool):
            self.errors.append(f"{key}: must be true or false (got {_show(value)})")
            return None
        return value

    def choice(self, key: str, allowed: Iterable[Any], default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        allowed = list(allowed)
        if value not in allowed:
            shown = ", ".join(_show(a) for a in allowed)
            hint = ""
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
            self.errors.append(f"{key}: must be one of {shown} (got {_show(value)}){hint}")
            return None
        return value

    def error(self, message: str) -> None:
        self.errors.append(message)

    def finish(self) -> None:
        """Raise every problem found, unknown keys included."""
        for key in self._options:
            if key not in self._seen:
                close = difflib.get_close_matches(key, sorted(self._seen - {"driver"}), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.errors.append(f"{key}: unknown option{hint}")
        if self.errors:
            raise DriverConfigError(self.errors)
