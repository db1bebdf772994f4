"""One syslog message (framing already removed) → its header fields, RFC 5424 or RFC 3164.

Invariants (each has a test in tests/test_syslog_format.py):
- ``parse`` never raises, whatever the bytes; it returns ``None`` only when the message has no
  ``<PRI>`` (1 to 3 digits) or PRI is outside 0..191. Anything after a valid PRI that does not
  fit the grammar leaves the affected fields ``None``: a message that parses badly is still a
  syslog message with a facility and a severity.
- Work is linear in the message length: header fields are looked for in bounded windows, the
  regexes have only sequential quantifiers (none nested), and the only scan that may cover the
  whole message (RFC 5424 STRUCTURED-DATA, to find MSG) moves forward with ``bytes.find`` and
  a one-character-class search, in at most ``_MAX_SD_STEPS`` Python steps.
- ``msg_start`` is the offset of MSG in the bytes parsed: after STRUCTURED-DATA and a UTF-8 BOM
  (5424), after the TAG and one space (3164); ``len(message)`` when there is no MSG or it was
  not located (unterminated STRUCTURED-DATA, or more than ``_MAX_SD_STEPS`` elements, values
  and escaped quotes). It is not part of ``to_json()``.
- Text fields are decoded as UTF-8 with ``errors="replace"``; a field longer than the RFC 5424
  maximum for it (HOSTNAME 255, APP-NAME 48, PROCID 128, MSGID 32 bytes) is not that field and
  is ``None``, so a hostile message cannot make the parsed fields much larger than a header.
- ``time`` is RFC 3339 or ``None``:
  * an RFC 5424 / ISO 8601 timestamp is returned as given, with ``T`` and ``Z`` upper-cased and
    its fraction (up to 9 digits) and numeric offset kept; one without an offset (not valid
    RFC 5424, but rsyslog templates and devices send it) is read as UTC and gets ``Z``;
  * an RFC 3164 ``Mmm dd hh:mm:ss`` timestamp carries neither year nor zone. The zone of the
    sender is unknowable to a receiver, so it is read as UTC and rendered with ``Z`` (RFC 3339
    needs an offset; ``-00:00`` would claim the UTC instant is known, which it is not). The year
    is the latest of next year, this year and last year (of ``now``, in UTC) that does not put
    the message more than ``YEAR_INFERENCE_FUTURE_TOLERANCE`` (7 days) after ``now``: the
    current year normally, last year for a December message read in early January, next year
    for a ``Jan  1`` message from a clock slightly ahead on 31 December.

3164 is a description of practice, not a grammar; what real senders put after ``<PRI>`` is read
in this order, each part optional: a Cisco sequence number (``123: ``), a timestamp (BSD, with
an optional ``*``/``.`` sync marker, an optional year before the time, an optional fraction and
an optional trailing ``:``, read even when ``*`` says the device clock is not synchronised; or
an ISO 8601 one as rsyslog's high-precision format sends), a
HOSTNAME, and a TAG (``app[pid]:``, ``app:`` or ``app[pid]``). After a timestamp, the first word
is the HOSTNAME unless it looks like a TAG (ends with ``:`` or has ``[pid]``), which is how
devices that send no hostname are told apart. With no timestamp at all (``<13>hello``), RFC 3164
says the rest is content: no hostname is read, and a TAG only in its unambiguous ``app[pid]:``
form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from collector.syslog_time import (
    ISO_TIMESTAMP,
    MONTHS,
    YEAR_INFERENCE_FUTURE_TOLERANCE,
    bsd_time,
    iso_time,
)

__all__ = ["YEAR_INFERENCE_FUTURE_TOLERANCE", "SyslogFields", "parse"]

# RFC 5424 section 6: the longest each header field may be.
_MAX_HOSTNAME = 255
_MAX_APP_NAME = 48
_MAX_PROCID = 128
_MAX_MSGID = 32
# Longest timestamp token considered: "2024-01-02T03:04:05.123456789+01:00" is 35 bytes.
_MAX_TIMESTAMP = 40

_SP = 0x20
_BOM = b"\xef\xbb\xbf"

# Matched against a bounded window, so the only quantifiers are small and sequential.
_BSD_TIMESTAMP = re.compile(
    rb"[*.]?([A-Za-z]{3}) {1,2}(\d{1,2}) (?:(\d{4}) )?(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?:?"
)
_BSD_WINDOW = 40
# A TAG token (no spaces in it already): "app[pid]:", "app:", "app[pid]".
_TAG = re.compile(rb"([^\[\]:]{1,48})(?:\[([^\[\]]{0,128})\])?(:?)")
_TAG_WINDOW = _MAX_APP_NAME + _MAX_PROCID + 3
_CISCO_SEQUENCE = re.compile(rb"\d{1,10}: ")
# Inside an SD-ELEMENT, outside a PARAM-VALUE, only these two bytes change the state.
_SD_STOP = re.compile(rb'["\]]')
_SPACES = re.compile(rb" *")
_5424_LIMITS = (_MAX_TIMESTAMP, _MAX_HOSTNAME, _MAX_APP_NAME, _MAX_PROCID, _MAX_MSGID)
# TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, each within its maximum, spaces between.
_HEADER_5424 = re.compile(
    rb" *([^ ]{1,40}) +([^ ]{1,255}) +([^ ]{1,48}) +([^ ]{1,128}) +([^ ]{1,32})"
)
# Python-level steps (elements, values, escaped quotes) spent looking for where MSG starts.
_MAX_SD_STEPS = 4096


@dataclass(frozen=True, slots=True)
class SyslogFields:
    """The header of one syslog message; ``msg_start`` is the byte offset where MSG begins."""

    facility: int
    severity: int
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    msgid: str | None = None
    time: str | None = None
    # Offset of MSG / CONTENT in the parsed bytes (after a UTF-8 BOM); len(message) if none.
    msg_start: int = 0

    def to_json(self) -> dict[str, int | str | None]:
        """The entry's ``syslog`` object, exactly the keys the agent contract names."""
        return {
            "facility": self.facility,
            "severity": self.severity,
            "hostname": self.hostname,
            "app_name": self.app_name,
            "procid": self.procid,
            "msgid": self.msgid,
            "time": self.time,
        }


def parse(message: bytes, *, now: datetime | None = None) -> SyslogFields | None:
    """Parse one syslog message; ``None`` if it has no valid ``<PRI>``. Never raises.

    ``now`` is used only to infer the year of an RFC 3164 timestamp (default: the current
    time; a naive ``now`` is taken as UTC).
    """
    data = message if isinstance(message, bytes) else bytes(message)
    pri = _parse_pri(data)
    if pri is None:
        return None
    value, pos = pri
    facility, severity = divmod(value, 8)
    if _is_rfc5424(data, pos):
        return _parse_5424(data, pos + 2, facility, severity)
    return _parse_3164(data, pos, facility, severity, now)


# --- shared pieces -----------------------------------------------------------------------------


def _parse_pri(data: bytes) -> tuple[int, int] | None:
    """``(PRI value, offset after '>')``, or None."""
    if not data.startswith(b"<"):
        return None
    close = data.find(b">", 1, 5)
    if close < 2:
        return None
    digits = data[1:close]
    if not digits.isdigit():  # bytes.isdigit is ASCII-only
        return None
    value = int(digits)
    if value > 191:
        return None
    return value, close + 1


def _is_rfc5424(data: bytes, pos: int) -> bool:
    # VERSION "1" then SP then a TIMESTAMP ("-" or a date): a 3164 message whose content
    # happens to start with "1 " (e.g. "<13>1 apple") stays 3164.
    if data[pos : pos + 2] != b"1 ":
        return False
    at = _skip_spaces(data, pos + 2)
    nxt = data[at : at + 1]
    return nxt == b"-" or nxt.isdigit()


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _token_end(data: bytes, pos: int, limit: int) -> int:
    """End of the space-delimited token at ``pos`` if it is at most ``limit`` bytes, else -1."""
    end = data.find(b" ", pos, pos + limit + 1)
    if end >= 0:
        return end
    return len(data) if len(data) - pos <= limit else -1


# --- RFC 5424 ----------------------------------------------------------------------------------


def _parse_5424(data: bytes, pos: int, facility: int, severity: int) -> SyslogFields:
    n = len(data)
    header = _HEADER_5424.match(data, pos)
    if header is not None and (header.end() == n or data[header.end()] == _SP):
        # The usual, well-formed header in one C-level match; _header_fields reads the same
        # fields from anything else (a field missing, or longer than its maximum).
        values = [None if token == b"-" else token for token in header.groups()]
        pos = header.end() + 1
    else:
        values, pos = _header_fields(data, pos)
    stamp, hostname, app_name, procid, msgid = values
    msg_start = _skip_structured_data(data, pos) if pos < n else n
    if data.startswith(_BOM, msg_start):
        msg_start += len(_BOM)
    return SyslogFields(
        facility=facility,
        severity=severity,
        hostname=_decode(hostname) if hostname is not None else None,
        app_name=_decode(app_name) if app_name is not None else None,
        procid=_decode(procid) if procid is not None else None,
        msgid=_decode(msgid) if msgid is not None else None,
        time=iso_time(stamp) if stamp is not None else None,
        msg_start=msg_start,
    )


def _header_fields(data: bytes, pos: int) -> tuple[list[bytes | None], int]:
    """TIMESTAMP .. MSGID one by one, tolerating what the one-match fast path does not."""
    n = len(data)
    values: list[bytes | None] = []
    for limit in _5424_LIMITS:
        pos = _skip_spaces(data, pos)  # tolerate doubled separators
        if pos >= n:
            values.append(None)
            continue
        end = _token_end(data, pos, limit)
        if end < 0:
            # Too long to be this field: skip it so the fields after it can still be read.
            end = data.find(b" ", pos)
            end = n if end < 0 else end
            values.append(None)
        else:
            token = data[pos:end]
            values.append(None if token == b"-" else token)
        pos = end + 1
    return values, pos


def _skip_structured_data(data: bytes, pos: int) -> int:
    """Offset of MSG after the STRUCTURED-DATA that starts at ``pos`` (``len(data)`` if none).

    Every step moves ``pos`` forward past what it looked at with ``find``/``search``, so the scan
    is linear; the number of steps is capped so that a megabyte of ``[]`` or ``\\"`` costs a few
    thousand Python iterations, not a million.
    """
    n = len(data)
    if data[pos] == 0x2D and (pos + 1 == n or data[pos + 1] == _SP):  # "-"
        return min(pos + 2, n)
    if data[pos] != 0x5B:  # no "[": no STRUCTURED-DATA at all, the rest is MSG
        return pos
    pos += 1
    in_value = False
    for _ in range(_MAX_SD_STEPS):
        if in_value:
            quote = data.find(b'"', pos)
            if quote < 0:
                return n  # unterminated: everything is (broken) structured data
            if quote > pos and data[quote - 1] == 0x5C:
                # Escaped when an odd number of backslashes precede it; the run is measured
                # on the bytes since the previous quote, so no byte is looked at twice.
                between = data[pos:quote]
                if (len(between) - len(between.rstrip(b"\\"))) % 2 == 1:
                    pos = quote + 1
                    continue
            pos = quote + 1
            in_value = False
            continue
        stop = _SD_STOP.search(data, pos)
        if stop is None:
            return n
        at = stop.start()
        pos = at + 1
        if data[at] == 0x22:  # '"' opens a PARAM-VALUE
            in_value = True
            continue
        if pos < n and data[pos] == 0x5B:  # "]" closed the element; "[" opens the next one
            pos += 1
            continue
        return pos + 1 if pos < n and data[pos] == _SP else pos
    return n  # more structure than any real sender emits: MSG is not located


# --- RFC 3164 ----------------------------------------------------------------------------------


def _parse_3164(
    data: bytes, pos: int, facility: int, severity: int, now: datetime | None
) -> SyslogFields:
    n = len(data)
    pos = _skip_spaces(data, pos)
    sequence = _CISCO_SEQUENCE.match(data, pos, min(n, pos + 12))
    if sequence is not None:
        pos = sequence.end()

    time, after = _timestamp_3164(data, pos, now)
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    if after >= 0:
        pos = _skip_spaces(data, after)
        tag = _tag_at(data, pos)
        if tag is None and pos < n:
            end = _token_end(data, pos, _MAX_HOSTNAME)
            if end > pos:
                hostname = _decode(data[pos:end])
                pos = _skip_spaces(data, end)
                tag = _tag_at(data, pos)
    else:
        tag = _tag_at(data, pos)
        if tag is not None and tag[1] is None:
            tag = None  # without a timestamp, only the unambiguous "app[pid]:" is a TAG
    if tag is not None:
        app_name, procid, pos = tag
    if pos < n and data[pos] == _SP:
        pos += 1
    return SyslogFields(
        facility=facility,
        severity=severity,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
        msgid=None,
        time=time,
        msg_start=min(pos, n),
    )


def _skip_spaces(data: bytes, pos: int) -> int:
    if data[pos : pos + 1] != b" ":
        return pos
    return _SPACES.match(data, pos).end()  # type: ignore[union-attr]  # " *" always matches


def _timestamp_3164(data: bytes, pos: int, now: datetime | None) -> tuple[str | None, int]:
    """``(time, offset after the timestamp)``; offset -1 when there is no timestamp at ``pos``.

    A timestamp that has the shape but not a valid date (``Feb 31``) still counts as the
    timestamp (so the hostname after it is read) with ``time`` None.
    """
    n = len(data)
    if pos < n and data[pos : pos + 1].isdigit():
        end = _token_end(data, pos, _MAX_TIMESTAMP)
        if end < 0 or ISO_TIMESTAMP.fullmatch(data, pos, end) is None:
            return None, -1
        return iso_time(data[pos:end]), end
    match = _BSD_TIMESTAMP.match(data, pos, min(n, pos + _BSD_WINDOW))
    if match is None or (match.end() < n and data[match.end()] != _SP):
        return None, -1
    month_name, day, year, hour, minute, second, fraction = match.groups()
    month = MONTHS.get(month_name.lower())
    if month is None:
        return None, -1
    clock = (int(hour), int(minute), int(second))
    return bsd_time(month, int(day), year, clock, fraction, now), match.end()


def _tag_at(data: bytes, pos: int) -> tuple[str, str | None, int] | None:
    """``(app_name, procid, offset after the TAG)`` if a TAG token starts at ``pos``."""
    if pos >= len(data):
        return None
    end = _token_end(data, pos, _TAG_WINDOW)
    if end < 0:
        return None
    match = _TAG.fullmatch(data, pos, end)
    if match is None:
        return None
    app, pid, colon = match.groups()
    if pid is None and not colon:
        return None  # a bare word: content (or a hostname), not a TAG
    return _decode(app), (_decode(pid) if pid else None), end
