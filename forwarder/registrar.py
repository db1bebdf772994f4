"""Registration: before the first batch, and again whenever the server forgets the agent."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog

from forwarder.outcome import Request, classify, unanswered
from forwarder.transport import Transport
from ila_core.errors import TransientSendError

log = structlog.get_logger("forwarder")


@dataclass(frozen=True, kw_only=True)
class AgentInfo:
    agent_id: str
    hostname: str
    os_type: str
    os_version: str
    agent_version: str
    sources: tuple[str, ...]

    def register_json(self) -> dict[str, object]:
        return {
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "os_type": self.os_type,
            "os_version": self.os_version,
            "agent_version": self.agent_version,
            "sources": list(self.sources),
        }


@dataclass(frozen=True)
class Registration:
    """The outcome of one register attempt."""

    ok: bool
    reason: str | None  # why it failed, key-free
    retry_after: float | None = None
    auth: bool = False  # the key was rejected


class Registrar:
    """Shared by the batch and heartbeat threads; ``registered`` gates every batch."""

    def __init__(self, info: AgentInfo) -> None:
        self.info = info
        self.registered = threading.Event()
        self.needed = threading.Event()  # wakes the heartbeat thread to register now
        self.needed.set()

    def register(self, transport: Transport) -> Registration:
        """One attempt; the outcome as a value (the reason when it failed)."""
        try:
            reply = transport.post_json("/api/agent/register", self.info.register_json())
        except TransientSendError as exc:
            decision = unanswered(str(exc))
            return Registration(False, decision.reason)
        decision = classify(reply.status, request=Request.REGISTER)
        if not decision.ok:
            return Registration(False, decision.reason, reply.retry_after, decision.auth)
        self.needed.clear()
        self.registered.set()
        log.info("registered", agent_id=self.info.agent_id, ms=reply.ms)
        return Registration(True, None)

    def invalidate(self) -> None:
        """The server answered 404: register again before the next batch."""
        if self.registered.is_set():
            log.warning("server_forgot_agent", agent_id=self.info.agent_id)
        self.registered.clear()
        self.needed.set()
