"""RFC 6587 framing: the bytes of one TCP (or TLS) syslog connection → its messages.

Invariants (each has a test in tests/test_syslog_framing.py):
- Framing is detected per message. A frame that starts with 1 to 9 digits, the first not
  ``0``, followed by a space is octet-counted (RFC 6587 3.4.1): exactly that many bytes follow
  and are the message, LF and NUL included. Anything else is non-transparent framing
  (3.4.2): the message runs to the next LF, and a CR right before the LF is dropped with it.
- Only LF delimits. NUL is not a delimiter (the RFC mentions it as a rare alternative): it is
  kept as message content, so a message carrying a NUL is not cut in two; a sender that
  frames with NUL alone hits ``max_message_bytes`` and gets a ``FramingError``.
- Empty newline-framed messages (blank keep-alive lines, an LF a sender adds after an
  octet-counted frame) are not messages and are dropped.
- Memory is bounded: between calls the decoder holds at most ``max_message_bytes + 1`` bytes
  (a whole message and its CR; or, if that is less, the 9 digits of a count-or-text). A frame
  that cannot fit (an octet count above the limit, a line longer than it) is a
  ``FramingError``, raised before its bytes are buffered; the caller logs it and closes.
- Nothing but ``FramingError`` is raised, whatever the bytes, and once raised the stream is
  given up: every later ``feed`` raises it again (after a framing error, where the next frame
  starts is unknowable). Messages completed before the error in the same ``feed`` are
  returned first and the error is raised by the next call, so no complete message is lost.
- An octet count that lies cannot be detected: the count is believed. With ``50 `` followed by
  10 bytes, an LF and the next message, the decoder takes those 10 bytes, the LF and the next
  39 bytes as one message; the frame after it starts mid-message, so it is read as newline
  framing up to the next LF (garbage, but bounded) or, if it happens to start with digits and
  a space, as another octet count that may then fail the limit. Whatever follows, memory stays
  within the bound above and the only exception is ``FramingError``.
- ``flush`` is called when the connection closes: a newline-framed message that never got its
  LF is returned (devices close right after their last message; one over the limit, held
  a byte longer in case a CR came, is a ``FramingError``). A partial octet-counted
  frame is not returned: its length says it is incomplete, and the sender may resend it
  whole, so ``flush`` raises ``FramingError("connection closed mid-frame, N of M bytes")``
  and drops it. After ``flush``, even one that raised, the decoder is empty and reusable; a
  second ``flush`` returns ``[]``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "FrameDecoder", "FramingError"]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024

# An octet count has at most 9 digits: RFC 6587 MSG-LEN is NONZERO-DIGIT *DIGIT, and nine
# digits (< 1 GB) is far above any limit a receiver would set.
_MAX_COUNT_DIGITS = 9

_LF = b"\n"
_CR = 0x0D
_SP = 0x20
_ZERO = 0x30
_ONE = 0x31
_NINE = 0x39

# What the bytes in ``_pending`` are.
_NOTHING = 0  # nothing, or the digits of a frame start not yet known to be a count
_LINE = 1  # the start of a newline-framed message (no LF in it)
_COUNTED = 2  # the start of an octet-counted message of ``_frame_len`` bytes


class FramingError(Exception):
    """The stream can no longer be cut into messages: log it and close the connection."""


class FrameDecoder:
    """Cuts the bytes of one connection into syslog messages, framing removed."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int):
            raise TypeError("max_message_bytes must be an int")
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be at least 1, not {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self._pending = bytearray()
        self._state = _NOTHING
        self._frame_len = 0
        self._error: str | None = None
        self._error_raised = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._pending)

    @property
    def error(self) -> FramingError | None:
        """The framing error the stream ran into, if any (raised by the next call if not yet)."""
        return FramingError(self._error) if self._error is not None else None

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes read from the connection; return the messages they complete, in order."""
        if self._error is not None:
            self._error_raised = True
            raise FramingError(self._error)
        if not isinstance(data, bytes):
            data = bytes(data)  # messages are bytes even when the caller reads into a buffer
        out: list[bytes] = []
        if data:
            start = self._complete_pending(data, out)
            if start >= 0:
                self._scan(data, start, out)
        if self._error is not None and not out:
            self._error_raised = True
            raise FramingError(self._error)
        return out

    def flush(self) -> list[bytes]:
        """At connection close: the last newline-framed message if its LF never came."""
        pending, state, frame_len = self._pending, self._state, self._frame_len
        error = None if self._error_raised else self._error
        self._pending, self._state, self._frame_len = bytearray(), _NOTHING, 0
        self._error, self._error_raised = None, False
        if error is not None:
            raise FramingError(error)
        if state == _COUNTED:
            raise FramingError(f"connection closed mid-frame, {len(pending)} of {frame_len} bytes")
        if pending.endswith(b"\r"):
            del pending[-1]
        if len(pending) > self.max_message_bytes:  # held one byte more, for a CR that never came
            raise FramingError(
                f"newline-framed message of {len(pending)} bytes "
                f"exceeds max_message_bytes {self.max_message_bytes}"
            )
        return [bytes(pending)] if pending else []

    # --- internals ---------------------------------------------------------------------------

    def _complete_pending(self, data: bytes, out: list[bytes]) -> int:
        """Use ``data`` to finish the pending frame; return where the next frame starts in
        ``data``, or -1 when all of ``data`` went into the (still pending) frame."""
        pending = self._pending
        if self._state == _COUNTED:  # may hold no byte yet: the read ended after "N "
            missing = self._frame_len - len(pending)
            if len(data) < missing:
                pending += data
                return -1
            pending += data[:missing]
            out.append(bytes(pending))
            self._reset()
            return missing
        if self._state == _LINE:
            lf = data.find(_LF)
            if lf < 0:
                if len(pending) + len(data) > self.max_message_bytes + 1:
                    self._fail_line(len(pending) + len(data))
                    return -1
                pending += data
                return -1
            pending += data[:lf]
            if pending.endswith(b"\r"):
                del pending[-1]
            if len(pending) > self.max_message_bytes:
                self._fail_line(len(pending))
                return -1
            if pending:  # only "\r" was pending: a blank line
                out.append(bytes(pending))
            self._reset()
            return lf + 1
        if not pending:
            return 0
        # A few digits that might have been an octet count: decide again with more bytes.
        # The copy is of data once per read, not per byte, and only when a read ended there.
        head = bytes(pending)
        self._reset()
        self._scan(head + data, 0, out)
        return -1

    def _scan(self, data: bytes, i: int, out: list[bytes]) -> None:
        """Cut complete frames out of ``data`` from ``i`` (a frame start); keep the rest."""
        n = len(data)
        limit = self.max_message_bytes
        find = data.find
        append = out.append
        while i < n:
            first = data[i]
            if _ONE <= first <= _NINE:
                j = i + 1
                last = min(n, i + _MAX_COUNT_DIGITS + 1)
                while j < last and _ZERO <= data[j] <= _NINE:
                    j += 1
                if j == n and j - i <= _MAX_COUNT_DIGITS:
                    self._hold(_NOTHING, data, i)  # cannot tell a count from text yet
                    return
                if j - i <= _MAX_COUNT_DIGITS and data[j] == _SP:
                    size = int(data[i:j])
                    if size > limit:
                        self._fail(f"octet count {size} exceeds max_message_bytes {limit}")
                        return
                    body = j + 1
                    end = body + size
                    if end > n:
                        self._hold(_COUNTED, data, body)
                        self._frame_len = size
                        return
                    append(data[body:end])
                    i = end
                    continue
            lf = find(_LF, i)
            if lf < 0:
                if n - i > limit + 1:
                    self._fail_line(n - i)
                    return
                self._hold(_LINE, data, i)
                return
            end = lf - 1 if lf > i and data[lf - 1] == _CR else lf
            if end - i > limit:
                self._fail_line(end - i)
                return
            if end > i:
                append(data[i:end])
            i = lf + 1

    def _hold(self, state: int, data: bytes, start: int) -> None:
        self._state = state
        self._pending = bytearray(memoryview(data)[start:])

    def _reset(self) -> None:
        self._pending = bytearray()
        self._state = _NOTHING
        self._frame_len = 0

    def _fail_line(self, size: int) -> None:
        self._fail(
            f"newline-framed message of at least {size} bytes "
            f"exceeds max_message_bytes {self.max_message_bytes}"
        )

    def _fail(self, message: str) -> None:
        self._reset()
        self._error = message
