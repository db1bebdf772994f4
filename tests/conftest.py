"""Fixtures: real buffers, a reference receiver subprocess and agent subprocesses — each
cleaned up however the test ends."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from queue_store.store import QueueStore
from tests.procs import AgentProc, ReceiverProc, write_lines


@pytest.fixture
def open_buffer(tmp_path: Path) -> Iterator[Callable[..., QueueStore]]:
    """``open_buffer(name="b.db", **options)``: a real QueueStore in tmp_path, closed at the
    end of the test (closing twice is fine, so a test may close and reopen)."""
    made: list[QueueStore] = []

    def open_(name: str = "b.db", **options: Any) -> QueueStore:
        store = QueueStore(str(tmp_path / name), **options)
        made.append(store)
        return store

    try:
        yield open_
    finally:
        for store in made:
            store.close()


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


class LogAgent(NamedTuple):
    """An agent subprocess tailing one log file (unpacks as ``agent, log``)."""

    agent: AgentProc
    log: Path


StartAgent = Callable[..., LogAgent]


@pytest.fixture
def start_agent(tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]) -> StartAgent:
    """``start_agent(lines=(), *, log_name="app.log", start=True, **config)``: write ``lines``
    to a log file in tmp_path and run an agent tailing it against the reference receiver."""

    def start(
        lines: Sequence[str] = (), *, log_name: str = "app.log", start: bool = True, **config: Any
    ) -> LogAgent:
        log = tmp_path / log_name
        write_lines(log, list(lines))
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)], **config)
        agents.append(agent)
        if start:
            agent.start()
        return LogAgent(agent, log)

    return start


@dataclass
class Disk:
    """A small tmpfs and a filler file that takes its free space."""

    path: Path

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def fill(self) -> None:
        """Take every free byte (the buffer's next write that needs room fails)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for block in (65536, 4096, 512):  # down to the last partial page
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * block):
                        pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    try:
        yield Disk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
