"""Errors of the agent, grouped by what the caller does next.

    AgentError
    ├── ConfigError            → exit 2 with "file: key: what is wrong" (no traceback)
    ├── UsageError             → exit 2: a command-line option that cannot work
    ├── BufferLocked           → exit 1: another agent process owns this buffer
    ├── QueueCorrupt           → quarantine the buffer file, start a fresh one, keep collecting
    ├── BufferFull             → policy "block": the collector waits for room
    ├── BufferWriteError       → disk full, I/O error: keep what was read, retry the write
    └── SendError
        └── TransientSendError → back off and retry (network, TLS, DNS, timeout)

Foreign exceptions (``sqlite3``, ``requests``, ``OSError``) are translated where they cross
a package boundary, with ``raise ... from exc``.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; names the file and the key."""

    def __init__(self, file: str, key: str | None, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


class UsageError(AgentError):
    """The command line asks for something that cannot work."""


class BufferLocked(AgentError):
    """Another process already owns the buffer."""


class QueueCorrupt(AgentError):
    """The buffer file cannot be used as a database."""


class BufferFull(AgentError):
    """The buffer is at its byte budget and the policy is ``block``."""


class BufferWriteError(AgentError):
    """The buffer could not be written (disk full, I/O error, a read-only file)."""


class SendError(AgentError):
    """A request to the server did not get an answer."""


class TransientSendError(SendError):
    """Connection refused/reset, timeout, DNS or TLS failure: retry later.

    ``congestion``: sent and not answered in time (the output is overloaded); ``down``:
    refused or reset (the output is down or shedding connections). Either way the agent
    sends less; a DNS or TLS failure is a configuration problem, neither.
    """

    def __init__(self, reason: str, *, congestion: bool = False, down: bool = False) -> None:
        super().__init__(reason)
        self.congestion = congestion
        self.down = down
