"""The NATS JetStream output: one message per entry, an entry confirmed only by its PubAck.

The forwarder is threaded; nats-py is asyncio. The sink runs one event loop in a thread of its
own that owns the client (forwarder/nats_publisher.py), and ``send`` is a blocking call into it
with a deadline.

Why the publishing is done by hand rather than with ``js.publish`` / ``js.publish_async``:

- every message of a batch is published at once, each with its own reply subject under one
  wildcard inbox, and the PubAcks are awaited together (one round trip per batch, not per
  message);
- nats-py 2.16's ``publish_async`` never resolves its future when the server answers with an
  error (the error is raised inside the subscription callback), so a message too large for
  the stream would hang the batch;
- ``pending_size=0``: while the connection is down, ``publish`` raises at once instead of
  buffering in the client, so a batch fails fast and the forwarder backs off. Nothing is held
  anywhere but in the agent's buffer.

Answers: a PubAck (also one with ``duplicate``: the stream already holds that ``Nats-Msg-Id``)
confirms the entry; "message size exceeds maximum allowed" or a message over the server's
``max_payload`` refuses it for good (dead letter); anything else — no stream, no connection,
no answer in time, another JetStream error — leaves it in the buffer, to be sent again.

The agent never creates streams: a missing one is said in ``last_error``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import structlog

from forwarder.encode import message_body
from forwarder.nats_publisher import CONNECT_TIMEOUT, NO_STREAM, STREAM_INFO_TIMEOUT, Publisher
from forwarder.sink import Delivery, Result, Verdict, per_message
from ila_core.settings import SettingsReader
from queue_store.records import Entry

log = structlog.get_logger("forwarder")

EXTRA = "pip install 'ila-soc-agent[nats]'"
DEFAULT_URL_SCHEMES = ("nats", "tls")
DEFAULT_SUBJECT = "ila.logs"
DEFAULT_STREAM = "ILA_LOGS"
DEFAULT_PUBLISH_TIMEOUT = 10.0  # seconds for a batch's PubAcks
LOOP_MARGIN = 5.0  # the loop thread answers a batch at most this long after its deadline


@dataclass(frozen=True)
class NatsOutput:
    """``{"type": "nats", "url", "subject", "stream", "tls_ca_file", "creds_file",
    "publish_timeout"}``."""

    type_name: ClassVar[str] = "nats"

    url: str  # one or more server URLs, comma-separated (a cluster)
    subject: str = DEFAULT_SUBJECT
    stream: str = DEFAULT_STREAM
    tls_ca_file: str | None = None
    creds_file: str | None = None
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT

    @classmethod
    def from_json(cls, r: SettingsReader) -> NatsOutput:
        r.warn_unknown(
            {"type", "url", "subject", "stream", "tls_ca_file", "creds_file", "publish_timeout"}
        )
        url = r.text("url")
        for one in url.split(","):
            parts = urlsplit(one.strip())
            if parts.scheme not in DEFAULT_URL_SCHEMES or not parts.hostname:
                raise r.error("url", f"must be nats://HOST:PORT or tls://HOST:PORT, got {one!r}")
        subject = r.string("subject", DEFAULT_SUBJECT) or DEFAULT_SUBJECT
        tokens = subject.split(".")
        if any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
            raise r.error("subject", f"must be a subject without wildcards, got {subject!r}")
        stream = r.string("stream", DEFAULT_STREAM) or DEFAULT_STREAM
        if any(c in stream for c in " \t\r\n.*>/\\"):
            raise r.error("stream", f"is not a valid stream name: {stream!r}")
        spec = cls(
            url=url,
            subject=subject,
            stream=stream,
            tls_ca_file=_readable(r, "tls_ca_file"),
            creds_file=_readable(r, "creds_file"),
            publish_timeout=r.number("publish_timeout", DEFAULT_PUBLISH_TIMEOUT),
        )
        # The client is an extra: say which one at config load, not at the first send.
        if importlib.util.find_spec("nats") is None:
            raise r.error("type", f"the nats output needs the nats-py client: {EXTRA}")
        if spec.creds_file is not None and importlib.util.find_spec("nkeys") is None:
            raise r.error("creds_file", f"a credentials file needs the nkeys package: {EXTRA}")
        return spec

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "url": _redact_url(self.url),
            "subject": self.subject,
            "stream": self.stream,
            "tls_ca_file": self.tls_ca_file,
            "creds_file": self.creds_file,
            "publish_timeout": self.publish_timeout,
        }

    def label(self) -> str:
        return f"{_redact_url(self.url)} stream {self.stream} subject {self.subject}"

    def make_sink(self, *, agent_id: str, hostname: str) -> NatsSink:
        return NatsSink(self, agent_id=agent_id, hostname=hostname)


class NatsSink:
    """Publishes each entry as one JetStream message; ``send`` blocks until every message has
    its answer or ``publish_timeout`` has passed."""

    name = "nats"

    def __init__(self, spec: NatsOutput, *, agent_id: str, hostname: str) -> None:
        self.spec = spec
        self._agent_json = json.dumps(agent_id, ensure_ascii=False)
        self._host_json = json.dumps(hostname, ensure_ascii=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="nats-output", daemon=True)
        self._closed = False
        self._thread.start()
        self._publisher = Publisher(spec, self._loop, where=_redact_url(spec.url))
        # Connecting never blocks the agent: an unreachable server is a failed send, later.
        self._call(self._publisher.start())

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _call(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @property
    def connected(self) -> bool:
        """Connected to a server and ready to publish (read from any thread)."""
        nc = self._publisher.nc
        return self._publisher.ready and nc is not None and nc.is_connected

    def send(self, entries: Sequence[Entry]) -> Delivery:
        if self._closed:
            return per_message([Result(Verdict.DOWN, "NATS output closed")] * len(entries))
        messages = [
            (e.event_uid, message_body(e, self._host_json, self._agent_json)) for e in entries
        ]
        timeout = self.spec.publish_timeout
        future = self._call(self._publisher.publish(messages, timeout))
        try:
            results: list[Result] = future.result(timeout + LOOP_MARGIN)
        except concurrent.futures.TimeoutError:
            future.cancel()
            results = [Result(Verdict.LATE, "NATS client did not answer in time")] * len(entries)
        if any(r.verdict is Verdict.MISSING for r in results):
            # One lookup per failed batch (they are backed off) says what exactly is missing.
            why = self._call(self._publisher.explain_no_stream())
            try:
                reason = why.result(STREAM_INFO_TIMEOUT + LOOP_MARGIN)
            except concurrent.futures.TimeoutError:
                reason = self._publisher.no_stream_text(None)
            results = [Result(Verdict.MISSING, reason) if r is NO_STREAM else r for r in results]
        return per_message(results)

    def close(self) -> None:
        """Closes the connection and stops the loop thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._publisher.close()).result(CONNECT_TIMEOUT)
        except Exception as exc:  # closing must not fail the agent's shutdown
            log.warning("nats_close_failed", error=str(exc))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONNECT_TIMEOUT)


def _redact_url(url: str) -> str:
    """The URL(s) with any password replaced: what may be logged and shown."""
    out = []
    for one in url.split(","):
        parts = urlsplit(one.strip())
        if parts.password is not None:
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
            parts = parts._replace(netloc=f"{parts.username}:***@{host}{port}")
        out.append(urlunsplit(parts))
    return ",".join(out)


def _readable(r: SettingsReader, key: str) -> str | None:
    """An optional file the output reads (a CA, credentials): it must be readable now."""
    path = r.path(key, None)
    if path is not None and not os.access(path, os.R_OK):
        raise r.error(key, f"cannot read {path}")
    return path
