"""What is wrong right now, reported by the parts that know: the one place ``/healthz``,
``status`` and the heartbeat read from.

A part sets a problem under its own name (``buffer``, ``collector``, ``thread:forwarder``) and
clears it when it is over; readers get the current set. Setting the same problem again is free,
so callers need not remember what they said.
"""

from __future__ import annotations

import threading


class HealthBoard:
    """Named problems, shared by every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}

    def set(self, part: str, problem: str | None) -> None:
        """Report ``problem`` for ``part`` (None: it is fine again)."""
        with self._lock:
            if problem is None:
                self._problems.pop(part, None)
            else:
                self._problems[part] = problem

    def problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self._problems)

    @property
    def ok(self) -> bool:
        with self._lock:
            return not self._problems


def describe_write_failure(error: str) -> str:
    """A buffer write failure in the words an operator searches for ("disk full")."""
    lowered = error.lower()
    if "disk is full" in lowered or "no space" in lowered:
        return f"disk full: {error}"
    if "readonly" in lowered or "read-only" in lowered:
        return f"buffer read-only: {error}"
    return f"buffer write failed: {error}"
