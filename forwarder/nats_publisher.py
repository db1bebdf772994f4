"""The asyncio side of the NATS output: the nats-py client, publishing a batch with its
PubAcks awaited together, and judging each answer (see forwarder/nats_sink.py for why the
publishing is done by hand). Everything here runs on the sink's event loop thread.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import TYPE_CHECKING, Any

import structlog

from forwarder.sink import CONFIRMED, Result, Verdict

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from forwarder.nats_sink import NatsOutput

log = structlog.get_logger("forwarder")

CONNECT_TIMEOUT = 5  # seconds per connection attempt (nats-py wants an int)
RECONNECT_WAIT = 1  # seconds between attempts; nats-py retries forever in the background
PING_INTERVAL = 20  # a half-dead connection is noticed after 2 unanswered pings (40 s)
STREAM_INFO_TIMEOUT = 2.0  # the lookup that explains a "no responders" answer
ERR_MSG_TOO_LARGE = 10054  # JetStream: "message size exceeds maximum allowed"
ERR_WRONG_STREAM = 10060  # JetStream: "expected stream does not match"
_HEADER_OVERHEAD = len(b"NATS/1.0\r\n\r\n")
NO_STREAM = Result(Verdict.MISSING)  # "no responders": the sink says which stream is missing


class Publisher:
    """Owns the nats-py client. Every method runs on the sink's event loop."""

    def __init__(self, spec: NatsOutput, loop: asyncio.AbstractEventLoop, *, where: str) -> None:
        self.spec = spec
        self.loop = loop
        self.where = where  # the URL as it may be logged (no password)
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
            self.problem = describe(exc)
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
        text = describe(exc)
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
            return NO_STREAM  # "no responders": no stream listens on the subject
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
            size = len(body) + header_size(headers)
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
                                    f"{describe(exc)}")  # fmt: skip
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


def header_size(headers: dict[str, str]) -> int:
    return _HEADER_OVERHEAD + sum(len(k) + len(v) + 4 for k, v in headers.items())


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
