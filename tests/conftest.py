"""Fixtures: a reference receiver subprocess and agent subprocesses, cleaned up always."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import AgentProc, ReceiverProc


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverProc]:
    r = ReceiverProc(tmp_path).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    """Register every AgentProc here so a failing test never leaves one running."""
    made: list[AgentProc] = []
    try:
        yield made
    finally:
        for a in made:
            a.cleanup()
