"""The HTTP output: a batch is one POST /api/agent/ingest-batch, judged by the answer table."""

from __future__ import annotations

import json
from collections.abc import Sequence

import structlog

from forwarder.encode import encode_batch
from forwarder.outcome import Decision, Outcome, classify, unanswered
from forwarder.registrar import AgentInfo
from forwarder.signals import Signal, signal_for_status
from forwarder.sink import Delivery
from forwarder.transport import Transport
from ila_core.errors import TransientSendError
from queue_store.records import Entry

log = structlog.get_logger("forwarder")

INGEST_PATH = "/api/agent/ingest-batch"


class HttpSink:
    """Sends a batch as one request body of at most ``max_body_bytes`` (protocol.md)."""

    name = "http"

    def __init__(
        self, transport: Transport, info: AgentInfo, *, max_body_bytes: int | None = None
    ) -> None:
        self.transport = transport
        self.info = info
        self.max_body_bytes = max_body_bytes
        self._said_not_json = False

    def send(self, entries: Sequence[Entry]) -> Delivery:
        encoded = encode_batch(entries, agent_id=self.info.agent_id, hostname=self.info.hostname)
        size = len(encoded.body)
        if self.max_body_bytes is not None and size > self.max_body_bytes and encoded.n > 1:
            # Never sent larger than the contract allows: halves first (an entry larger than
            # the limit on its own still goes, alone).
            reason = f"body of {size} bytes over batch_max_bytes: splitting"
            return Delivery(Decision(Outcome.SPLIT, reason), Signal.ERROR, sent=False)
        try:
            reply = self.transport.post(INGEST_PATH, encoded.body, encoded.batch_id)
        except TransientSendError as exc:
            signal = (
                Signal.BACKPRESSURE
                if exc.congestion
                else Signal.UNREACHABLE
                if exc.down
                else Signal.ERROR
            )
            return Delivery(unanswered(str(exc)), signal, answered=False)
        decision = classify(reply.status, encoded.n)
        if decision.ok:
            self._check_json(reply.body)
        return Delivery(decision, signal_for_status(reply.status), reply.retry_after)

    def _check_json(self, body: bytes) -> None:
        """A 2xx is acceptance whatever its body; a body that is not JSON is said once (a
        proxy or a wrong server_url answering in its place)."""
        try:
            json.loads(body or b"{}")
        except ValueError:
            if not self._said_not_json:
                log.warning("answer_not_json", body=body[:80].decode("utf-8", "replace"))
                self._said_not_json = True
            return
        self._said_not_json = False

    def close(self) -> None:
        self.transport.close()
