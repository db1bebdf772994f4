"""Socket helpers of the syslog listener: binding, addresses, TLS, the kernel's UDP drops,
resets, errors in words."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from typing import Any

import structlog

from collector.syslog_source import SyslogSource

log = structlog.get_logger("collector")

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST at once
UDP_RCVBUF = 8 * 1024 * 1024  # asked of the kernel, which caps it at net.core.rmem_max


def peer_of(addr: Any) -> tuple[str, str]:
    """(``"ip:port"``, ip) of a socket address; IPv6 as ``"[ip]:port"``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        ip = str(addr[0])
        return (f"[{ip}]:{addr[1]}" if ":" in ip else f"{ip}:{addr[1]}"), ip
    return str(addr), str(addr)


def describe(exc: BaseException) -> str:
    """A socket or TLS error in a few words: the SSL reason or the OS's message."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def tls_context(spec: SyslogSource) -> ssl.SSLContext:
    """A server context with the listener's certificate; with ``tls_client_ca_file``, clients
    must present a certificate signed by that CA, and by no other: the context is built from
    nothing (not ``create_default_context``), so the system's public CAs are never trusted
    for client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: a sender that writes its messages and closes without reading
    # would leave the tickets unread, and a close with unread data is a TCP reset, which
    # throws away its last messages still in our receive queue. Resumption gains nothing here.
    ctx.num_tickets = 0
    assert spec.tls_cert_file is not None and spec.tls_key_file is not None
    ctx.load_cert_chain(spec.tls_cert_file, spec.tls_key_file)
    if spec.tls_client_ca_file is not None:
        ctx.load_verify_locations(cafile=spec.tls_client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def kernel_udp_drops(inode: int, family: int) -> int | None:
    """The kernel's receive-buffer drop count of the UDP socket ``inode`` (Linux: the last
    column of /proc/net/udp or udp6), or None when it cannot be read."""
    path = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
    wanted = str(inode)
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            next(f, None)  # the header
            for line in f:
                cols = line.split()
                if len(cols) >= 13 and cols[9] == wanted:
                    return int(cols[12])
    except (OSError, ValueError):
        return None
    return None


def reset(sock: socket.socket) -> None:
    """Close at once with a RST: a refused connection leaves no TIME_WAIT behind."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.close()


def raise_fd_limit(max_connections: int) -> None:
    """Let the process hold ``max_connections`` sockets: raise the soft RLIMIT_NOFILE toward
    the hard one when it is lower (the usual soft limit, 1024, is below the default 1000
    connections plus the agent's own files). Said in the log when it cannot be done."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    want = max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    if soft < want:
        log.warning("syslog_fd_limit_low", open_files_limit=soft, max_connections=max_connections,
                    note="connections beyond the limit are refused")  # fmt: skip


def bind(spec: SyslogSource) -> socket.socket:
    """The listening (TCP, TLS) or receiving (UDP) socket of ``spec``: bound, non-blocking."""
    kind = socket.SOCK_DGRAM if spec.scheme == "udp" else socket.SOCK_STREAM
    family, _, _, _, addr = socket.getaddrinfo(
        spec.host, spec.port, type=kind, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # A restart must not wait out TIME_WAIT. (Not for UDP: there it would let a
            # second process share the port and take some of the datagrams.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind(addr)
        if kind == socket.SOCK_STREAM:
            sock.listen(socket.SOMAXCONN)
            raise_fd_limit(spec.max_connections)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
