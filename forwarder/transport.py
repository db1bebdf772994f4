"""HTTP to the ILA-SOC server: one POST, no redirects, the key only in X-API-Key."""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
import urllib3

from forwarder.deadline import WATCHDOG, GuardedAdapter
from forwarder.retry import parse_retry_after
from ila_core.errors import TransientSendError

log = structlog.get_logger("forwarder")

DEFAULT_USER_AGENT = "ila-soc-agent"  # the wiring passes "ila-soc-agent/<version>"
DEFAULT_POOL_SIZE = 10
ANSWER_MAX_BYTES = 65536  # more of an answer is not read: the connection is dropped instead
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Reply:
    status: int
    retry_after: float | None
    ms: int
    location: str | None = None
    body: bytes = b""  # at most ANSWER_MAX_BYTES of it


@dataclass(frozen=True, kw_only=True)
class TransportSettings:
    server_url: str
    api_key: str
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    tls_ca_file: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    compression: str | None = None
    user_agent: str = DEFAULT_USER_AGENT

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"TransportSettings(server_url={self.server_url!r})"


class Transport:
    """POSTs JSON to the server over a given requests.Session (tests mount adapters on it)."""

    def __init__(
        self,
        settings: TransportSettings,
        session: requests.Session | None = None,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
    ):
        self.settings = settings
        if session is None:
            session = requests.Session()
            # One kept-alive connection per request in flight (the default keeps 10); each
            # request is cut off at its deadline, however slowly the server trickles.
            adapter = GuardedAdapter(pool_maxsize=max(pool_size, 1))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.session.trust_env = False  # no proxy/netrc surprises: the key goes to server_url only
        self.session.verify = settings.tls_ca_file or True
        if settings.tls_client_cert:
            self.session.cert = (
                (settings.tls_client_cert, settings.tls_client_key)
                if settings.tls_client_key
                else settings.tls_client_cert
            )
        self._base = settings.server_url.rstrip("/")
        self._prepared: dict[str, requests.PreparedRequest] = {}

    def post_json(self, path: str, payload: dict[str, Any]) -> Reply:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return self.post(path, body)

    def _request(
        self, path: str, body: bytes, idempotency_key: str | None
    ) -> requests.PreparedRequest:
        """The POST of ``body`` to ``path``, from a request prepared once per path: requests'
        own preparation (URL, merging settings and headers) costs ~0.3 ms of CPU per batch.
        While the server has set cookies, each request is prepared in full to carry them."""
        prepared = self._prepared.get(path) if not self.session.cookies else None
        if prepared is None:
            headers = {
                "Content-Type": "application/json",
                "X-API-Key": self.settings.api_key,
                "User-Agent": self.settings.user_agent,
            }
            request = requests.Request("POST", self._base + path, headers=headers, data=b"")
            prepared = self.session.prepare_request(request)
            if not self.session.cookies:
                self._prepared[path] = prepared
        req = prepared.copy()
        if idempotency_key:
            req.headers["Idempotency-Key"] = idempotency_key
        if self.settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
            req.headers["Content-Encoding"] = "gzip"
        req.body = body
        req.headers["Content-Length"] = str(len(body))
        return req

    def post(self, path: str, body: bytes, idempotency_key: str | None = None) -> Reply:
        """Send ``body``; raises TransientSendError when no HTTP answer came back."""
        started = time.monotonic()
        # The whole answer within connect + request timeout, not just each silence.
        deadline = self.settings.connect_timeout + self.settings.request_timeout
        with WATCHDOG.guard(deadline) as guard:
            try:
                resp = self.session.send(
                    self._request(path, body, idempotency_key),
                    timeout=(self.settings.connect_timeout, self.settings.request_timeout),
                    allow_redirects=False,
                    stream=True,
                )
                try:
                    answer = _read_bounded(resp)
                finally:
                    resp.close()
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
                if guard.fired:
                    raise TransientSendError(
                        f"read timeout: no complete answer within {deadline:g} s",
                        congestion=True,
                    ) from exc
                if isinstance(exc, urllib3.exceptions.HTTPError):  # reading the body
                    timed_out = isinstance(exc, urllib3.exceptions.ReadTimeoutError)
                    raise TransientSendError(
                        _describe_read(exc), congestion=timed_out, down=not timed_out
                    ) from exc
                raise _failure(exc) from exc
        return Reply(
            status=resp.status_code,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            ms=int((time.monotonic() - started) * 1000),
            location=resp.headers.get("Location"),
            body=answer,
        )

    def close(self) -> None:
        self.session.close()


def _read_bounded(resp: requests.Response) -> bytes:
    """The answer's body up to ANSWER_MAX_BYTES. A longer one (a misbehaving server: 100 MB)
    is not read on; closing the response then drops the connection rather than drain it."""
    if resp.raw is None:  # an adapter that answered from memory (tests)
        return bytes(resp.content[:ANSWER_MAX_BYTES])
    data = resp.raw.read(ANSWER_MAX_BYTES + 1, decode_content=True)
    if len(data) > ANSWER_MAX_BYTES:
        log.warning("answer_too_large", kept_bytes=ANSWER_MAX_BYTES, note="connection dropped")
        return bytes(data[:ANSWER_MAX_BYTES])
    return bytes(data)


def _describe_read(exc: urllib3.exceptions.HTTPError) -> str:
    """A failure while reading the answer's body."""
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection closed mid-answer"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "read timeout: timed out"
    return f"reading the answer failed: {type(exc).__name__}"


def _failure(exc: requests.exceptions.RequestException) -> TransientSendError:
    reason = _describe(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return TransientSendError(reason)  # TLS: a configuration problem, not load
    if "Name or service not known" in reason or "name resolution" in reason.lower():
        return TransientSendError(reason)  # DNS: likewise
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return TransientSendError(reason, congestion=True)
    down = isinstance(
        exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError
    )  # refused, reset, closed mid-answer, a connect timeout
    return TransientSendError(reason, down=down)


def _describe(exc: requests.exceptions.RequestException) -> str:
    """A short, key-free reason for a failed request."""
    if isinstance(
        exc, requests.exceptions.SSLError
    ) and "mismatch, certificate is not valid" in str(exc):
        return "TLS failure: the server's certificate is not for this host name"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(exc):
        return "connection closed mid-answer"
    if "RemoteDisconnected" in str(exc) or "closed connection without response" in str(exc):
        return "connection closed before an answer"
    kinds = (
        (requests.exceptions.SSLError, "TLS failure"),
        (requests.exceptions.ConnectTimeout, "connect timeout"),
        (requests.exceptions.ReadTimeout, "read timeout"),
        (requests.exceptions.ConnectionError, "connection failed"),
    )
    for kind, text in kinds:
        if isinstance(exc, kind):
            detail = str(exc.args[0]) if exc.args else ""
            return f"{text}: {_short(detail)}"
    # Other errors (InvalidHeader, ...) can quote request headers, and so the key: name only.
    return f"request failed: {type(exc).__name__}"


def _short(text: str) -> str:
    # urllib3 reasons are long; the tail usually names the cause (refused, DNS, reset).
    for marker in (
        "Connection refused",
        "Name or service not known",
        "Connection reset",
        "timed out",
        "CERTIFICATE_VERIFY_FAILED",
        "Temporary failure in name",
    ):
        if marker in text:
            return marker
    return text[:160]


def warn_plain_http(server_url: str) -> None:
    """Plain http:// to a host other than loopback exposes the key on the wire."""
    parts = urlsplit(server_url)
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        log.warning("plain_http_to_remote_host", host=parts.hostname, hint="use https://")
