"""Reading typed settings out of a decoded JSON object, naming the key on every error.

The configuration loader and every source or output spec use the same reader, so a bad value
anywhere is a ConfigError that names the file, the key (``log_sources[2].listen``) and what is
wrong with it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ila_core.errors import ConfigError

MAX_SECONDS = 7 * 86400.0  # a week: longer intervals are mistakes (and overflow waits)


class SettingsReader:
    """Pulls typed values out of ``raw``; keys are prefixed with ``prefix`` in errors."""

    def __init__(
        self,
        file: str,
        raw: dict[str, Any],
        base: Path,
        *,
        prefix: str = "",
        unknown: list[str] | None = None,
    ) -> None:
        self.file = file
        self.raw = raw
        self.base = base
        self.prefix = prefix
        self.unknown: list[str] = [] if unknown is None else unknown  # typos, warned about

    def key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(key), problem)

    def nested(self, key: str, raw: dict[str, Any]) -> SettingsReader:
        """A reader for an object inside this one (``log_sources[0]``, ``output``)."""
        return SettingsReader(self.file, raw, self.base, prefix=self.key(key), unknown=self.unknown)

    def warn_unknown(self, allowed: set[str]) -> None:
        """Keys nobody reads are remembered (warned about at start-up), not errors."""
        self.unknown.extend(self.key(k) for k in sorted(set(self.raw) - allowed))

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number of seconds, got {kind(value)}")
        if not math.isfinite(value) or value > MAX_SECONDS:
            raise self.error(key, f"must be a finite number up to {MAX_SECONDS:g}, got {value}")
        if value <= minimum:
            raise self.error(key, f"must be greater than {minimum:g}, got {value}")
        return float(value)

    def integer(
        self, key: str, default: int, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {kind(value)}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value}")
        return value

    def string(self, key: str, default: str | None) -> str | None:
        value = self.raw.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {kind(value)}")
        return value

    def text(self, key: str) -> str:
        """A required, non-empty string."""
        value = self.raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return value

    def choice(self, key: str, default: Any, choices: tuple[Any, ...]) -> Any:
        value = self.raw.get(key, default)
        if value not in choices:
            allowed = ", ".join(json.dumps(c) for c in choices)
            raise self.error(key, f"must be one of {allowed}, got {json.dumps(value)}")
        return value

    def path(self, key: str, default: str | None) -> str | None:
        value = self.string(key, default)
        if value is None:
            value = default  # an explicit null means "the default", next to the config too
        if value is None:
            return None
        if not value.strip():
            raise self.error(key, "must not be empty")
        return resolve(self.base, value)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings (absent or null: empty)."""
        value = self.raw.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of strings, got {kind(value)}")
        return tuple(value)


def kind(value: Any) -> str:
    """What a JSON value is, for an error message."""
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__) + f" ({json.dumps(value)[:40]})"


def resolve(base: Path, value: str) -> str:
    """A path from the config: ``~`` expanded, relative ones against the config's folder."""
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p))
