"""Outputs other than the ILA-SOC server's HTTP API: the ``output`` key of the config.

Each output type is a module that defines a frozen spec (``type_name``, ``from_json``,
``to_json``, ``make_sink``) and is listed in ``OUTPUT_TYPES``; the forwarder sends through the
``Sink`` the spec makes, and settles batches the same way whatever the sink.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Protocol

from forwarder.kafka_sink import KafkaOutput
from forwarder.nats_sink import NatsOutput
from forwarder.sink import Sink
from ila_core.settings import SettingsReader, kind


class OutputSpec(Protocol):
    """What the agent needs of a configured output."""

    type_name: ClassVar[str]

    @classmethod
    def from_json(cls, r: SettingsReader) -> OutputSpec:
        """The spec from its config object; ConfigError naming the key when invalid, or
        naming the pip extra when the client library is not installed."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The effective settings for ``check-config``, secrets left out."""
        ...

    def label(self) -> str:
        """Where entries go, for the log (``nats://127.0.0.1:4222 ILA_LOGS``)."""
        ...

    def make_sink(self, *, agent_id: str, hostname: str) -> Sink:
        """A connected (or connecting) sink; it never raises for an unreachable broker."""
        ...


# ``"type"`` in the ``output`` object → its spec. A new output is one more line here.
OUTPUT_TYPES: dict[str, type[OutputSpec]] = {
    NatsOutput.type_name: NatsOutput,
    KafkaOutput.type_name: KafkaOutput,
}


def parse_output(r: SettingsReader) -> OutputSpec | None:
    """The ``output`` key: null or absent for the HTTP API at ``server_url``."""
    raw = r.raw.get("output")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise r.error("output", f"must be an object or null, got {kind(raw)}")
    type_name = raw.get("type")
    spec = OUTPUT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if spec is None:
        known = ", ".join(OUTPUT_TYPES) or "none"
        raise r.error("output.type", f"unknown output type {json.dumps(type_name)} ({known})")
    return spec.from_json(r.nested("output", raw))
