"""The NATS JetStream output: one message per entry, an entry confirmed only by its PubAck.

The forwarder is threaded; nats-py is asyncio. The sink runs one event loop in a thread of its
own that owns the client, and ``send`` is a blocking call into it with a deadline.

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
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import structlog

from forwarder.encode import message_body
from forwarder.sink import CONFIRMED, Delivery, Result, Verdict, per_message
from ila_core.settings import SettingsReader
from queue_store.records import Entry

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = structlog.get_logger("forwarder")

EXTRA = "pip install 'ila-soc-agent[nats]'"
DEFAULT_URL_SCHEMES = ("nats", "tls")
DEFAULT_SUBJECT = "ila.logs"
DEFAULT_STREAM = "ILA_LOGS"
DEFAULT_PUBLISH_TIMEOUT = 10.0  # seconds for a batch's PubAcks
CONNECT_TIMEOUT = 5  # seconds per connection attempt (nats-py wants an int)
RECONNECT_WAIT = 1  # seconds between attempts; nats-py retries forever in the background
PING_INTERVAL = 20  # a half-dead connection is noticed after 2 unanswered pings (40 s)
STREAM_INFO_TIMEOUT = 2.0  # the lookup that explains a "no responders" answer
LOOP_MARGIN = 5.0  # the loop thread answers a batch at most this long after its deadline
ERR_MSG_TOO_LARGE = 10054  # JetStream: "message size exceeds maximum allowed"
ERR_WRONG_STREAM = 10060  # JetStream: "expected stream does not match"
_HEADER_OVERHEAD = len(b"NATS/1.0\r\n\r\n")


_NO_STREAM = Result(Verdict.MISSING)


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
        self._publisher = _Publisher(spec, self._loop)
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
            results = [Result(Verdict.MISSING, reason) if r is _NO_STREAM else r for r in results]
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


class _Publisher:
    """Owns the nats-py client. Every method runs on the sink's event loop."""

    def __init__(self, spec: NatsOutput, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.where = _redact_url(spec.url)
        self.nc: Client | None = None
        self.inbox = ""
        self.ready = False  # connected and subscribed to the reply inbox
        self.waiting: dict[str, asyncio.Future[Result]] = {}
        self.seq = 0
        self.problem = "not connected yet"  # the last thing the client said went wrong
        self.headers_base = {"Nats-Expected-Stream": spec.stream}
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def start(self) -> None:
        self._ensure_connecting()

    def _ensure_connecting(self) -> None:
        """A connect task runs unless connected; also after the client gave up (closed)."""
        if self.closing or (self.task is not None and not self.task.done()):
            return
        if self.nc is not None and not self.nc.is_closed:
            return
        self.ready = False
        self.task = self.loop.create_task(self._connect())
        self.task.add_done_callback(self._connect_ended)

    def _connect_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self.problem = _describe(exc)
            log.error("nats_connect_failed", url=self.where, error=self.problem)

    async def _connect(self) -> None:
        import nats

        opts: dict[str, Any] = {}
        if self.spec.tls_ca_file is not None:
            opts["tls"] = ssl.create_default_context(cafile=self.spec.tls_ca_file)
        if self.spec.creds_file is not None:
            opts["user_credentials"] = self.spec.creds_file
        nc = nats.NATS()
        self.nc = nc
        # The first connect also retries forever (-1) in this task; a send meanwhile fails
        # at once with the last error the client reported.
        await nc.connect(
            servers=[u.strip() for u in self.spec.url.split(",")],
            name="ila-agent",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT,
            connect_timeout=CONNECT_TIMEOUT,
            ping_interval=PING_INTERVAL,
            pending_size=0,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **opts,
        )
        self.inbox = nc.new_inbox()
        await nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)
        self.ready = True
        log.info("nats_connected", url=self.where)

    # -- the client's callbacks -----------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        text = _describe(exc)
        if text != self.problem:
            log.warning("nats_error", url=self.where, error=text)
        self.problem = text

    async def _on_disconnected(self) -> None:
        if self.ready and not self.closing:
            log.warning("nats_disconnected", url=self.where)
        # What was published and not yet acknowledged is sent again after the backoff; a
        # message the server did store comes back as a duplicate then (= confirmed).
        lost = Result(Verdict.DOWN, f"connection to NATS {self.where} lost before the PubAck")
        waiting, self.waiting = self.waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_result(lost)

    async def _on_reconnected(self) -> None:
        log.info("nats_reconnected", url=self.where)

    async def _on_reply(self, msg: Msg) -> None:
        fut = self.waiting.pop(msg.subject[len(self.inbox) + 1 :], None)
        if fut is not None and not fut.done():
            fut.set_result(self._judge(msg))

    def _judge(self, msg: Msg) -> Result:
        """A JetStream answer to one published message."""
        if msg.headers and msg.headers.get("Status") == "503":
            return _NO_STREAM  # "no responders": no stream listens on the subject
        if msg.data.startswith(b'{"stream":') and b'"error"' not in msg.data:
            return CONFIRMED  # the common case, without decoding the PubAck
        try:
            answer = json.loads(msg.data)
        except ValueError:
            return Result(Verdict.FAILED, "NATS answered with something other than a PubAck")
        error = answer.get("error") if isinstance(answer, dict) else None
        if not error:
            return CONFIRMED  # a PubAck; "duplicate": true means the stream holds it already
        code = error.get("err_code")
        text = f"{error.get('description', 'error')} (err_code {code})"
        if code == ERR_MSG_TOO_LARGE:
            return Result(Verdict.REFUSED, f"NATS stream {self.spec.stream} refused it: {text}")
        if code == ERR_WRONG_STREAM:
            return Result(
                Verdict.FAILED,
                f"NATS subject {self.spec.subject} is taken by another stream than "
                f"{self.spec.stream}: {text}",
            )
        return Result(Verdict.FAILED, f"NATS stream {self.spec.stream} refused the batch: {text}")

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, messages: list[tuple[str, bytes]], timeout: float) -> list[Result]:
        """One Result per message, at the latest ``timeout`` seconds from now."""
        import nats.errors

        self._ensure_connecting()
        nc = self.nc
        if nc is None or not self.ready or not nc.is_connected:
            down = Result(Verdict.DOWN, f"NATS {self.where} not connected: {self.problem}")
            return [down] * len(messages)
        results: list[Result | None] = [None] * len(messages)
        sent: list[tuple[int, str, asyncio.Future[Result]]] = []
        max_payload = nc.max_payload
        for i, (uid, body) in enumerate(messages):
            headers = {"Nats-Msg-Id": uid, **self.headers_base}
            # The server counts headers and payload against max_payload (the client only the
            # payload): a message over it would make the server close the connection.
            size = len(body) + _header_size(headers)
            if size > max_payload:
                results[i] = Result(
                    Verdict.REFUSED,
                    f"message over the NATS server's max_payload ({max_payload} bytes)",
                )
                continue
            self.seq += 1
            token = str(self.seq)
            fut: asyncio.Future[Result] = self.loop.create_future()
            self.waiting[token] = fut
            try:
                await nc.publish(
                    self.spec.subject, body, reply=f"{self.inbox}.{token}", headers=headers
                )
            except nats.errors.MaxPayloadError:
                self.waiting.pop(token, None)
                results[i] = Result(Verdict.REFUSED, "message over the NATS server's max_payload")
                continue
            except (nats.errors.Error, OSError) as exc:
                # Not connected (pending_size=0 refuses to buffer), closed, or draining.
                self.waiting.pop(token, None)
                results[i] = Result(Verdict.DOWN, f"NATS {self.where} not connected: "
                                    f"{_describe(exc)}")  # fmt: skip
                continue
            sent.append((i, token, fut))
        if sent:
            await asyncio.wait([f for _, _, f in sent], timeout=timeout)
        late = Result(Verdict.LATE, f"no PubAck from NATS {self.where} within {timeout:g} s")
        for i, token, fut in sent:
            if fut.done():
                results[i] = fut.result()
            else:
                self.waiting.pop(token, None)
                fut.cancel()
                results[i] = late
        return [r if r is not None else late for r in results]

    async def explain_no_stream(self) -> str:
        """Why no stream answered: the stream is missing, or does not take the subject."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return self.no_stream_text(None)
        try:
            await nc.jetstream(timeout=STREAM_INFO_TIMEOUT).stream_info(self.spec.stream)
        except Exception as exc:
            import nats.js.errors

            return self.no_stream_text(not isinstance(exc, nats.js.errors.NotFoundError))
        return self.no_stream_text(True)

    def no_stream_text(self, exists: bool | None) -> str:
        s = self.spec
        if exists is False:
            return (
                f"NATS stream {s.stream} does not exist: create it "
                "(the agent never creates streams)"
            )
        if exists:
            return (
                f"NATS stream {s.stream} does not take subject {s.subject}: add the subject "
                "to the stream"
            )
        return (
            f"no NATS stream takes subject {s.subject} (stream {s.stream}): create it "
            "(the agent never creates streams)"
        )

    async def close(self) -> None:
        self.closing = True
        if self.task is not None and not self.task.done():
            self.task.cancel()  # still connecting
        nc = self.nc
        if nc is not None and not nc.is_closed:
            await nc.close()


def _header_size(headers: dict[str, str]) -> int:
    return _HEADER_OVERHEAD + sum(len(k) + len(v) + 4 for k, v in headers.items())


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
