"""The seam every source type plugs into: a frozen spec parsed from the config, and a reader.

A new source type is a new module that defines its spec (``type_name``, ``from_json``,
``label``, ``to_json``, ``runs_on``) and, for record sources, a reader that commits records
with their cursor; ``collector.sources`` lists it in ``SOURCE_TYPES``. File sources are the one
kind read together: every file of every file source shares one ``Collector`` thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from collector.processing import Redactor
from ila_core.clock import Clock
from ila_core.counters import Counts
from ila_core.health import HealthBoard
from ila_core.settings import SettingsReader
from queue_store.store import QueueStore


class SourceSpec(Protocol):
    """What the agent needs of any configured source."""

    type_name: ClassVar[str]

    @classmethod
    def from_json(cls, r: SettingsReader) -> SourceSpec:
        """The spec from its config object; ConfigError naming the key when invalid."""
        ...

    def label(self) -> str:
        """How the source is named to the server at registration and in the agent's log."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The effective settings, for ``check-config``."""
        ...

    def runs_on(self, platform: str) -> bool:
        """False where this kind of source does not exist (journald on Windows)."""
        ...


@dataclass(frozen=True)
class ReaderContext:
    """What every record reader is built with."""

    store: QueueStore
    batch_size: int
    start_position: str
    first_start: bool  # no saved cursor means "first seen": start_position applies
    clock: Clock
    poll_interval: float
    health: HealthBoard = field(default_factory=HealthBoard)
    redactor: Redactor = field(default_factory=Redactor)  # the config's ``redact``, for all
    counts: Counts = field(default_factory=Counts)  # entries committed, by source


class RecordReader(Protocol):
    """A source read by its own thread: ``run`` until the clock stops; ``stop`` wakes it."""

    name: str

    def run(self) -> None: ...

    def stop(self) -> None: ...


class RecordSourceSpec(SourceSpec, Protocol):
    """A source with its own reader (journald, a Windows channel, a syslog listener)."""

    def reader(self, ctx: ReaderContext) -> RecordReader | None:
        """The reader, or None when it cannot run here (the reason is logged)."""
        ...
