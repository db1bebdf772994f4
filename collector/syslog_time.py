"""Syslog timestamps → RFC 3339 text (see the ``time`` invariant in collector/syslog_format.py):
RFC 5424 / ISO 8601 as given, upper-cased, ``Z`` added when it has no offset; RFC 3164 read as
UTC with its year inferred.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

YEAR_INFERENCE_FUTURE_TOLERANCE = timedelta(days=7)

ISO_TIMESTAMP = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?"
)
MONTHS = {
    name: number
    for number, name in enumerate(b"jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)
}


def iso_time(token: bytes) -> str | None:
    """RFC 3339 text for an ISO 8601 timestamp token, or None when it is not a valid one."""
    match = ISO_TIMESTAMP.fullmatch(token)
    if match is None:
        return None
    year, month, day, hour, minute, second, _, offset = match.groups()
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), _leap(int(second)))
    except ValueError:
        return None
    if offset is not None and len(offset) > 1 and (int(offset[1:3]) > 23 or int(offset[4:6]) > 59):
        return None
    # The regex admits only ASCII; upper() turns "t" and "z" into "T" and "Z", nothing else.
    text = token.decode("ascii").upper()
    return text if offset is not None else text + "Z"


def bsd_time(
    month: int,
    day: int,
    year: bytes | None,
    clock: tuple[int, int, int],
    fraction: bytes | None,
    now: datetime | None,
) -> str | None:
    """RFC 3339 text for an RFC 3164 ``Mmm dd [yyyy] hh:mm:ss[.fff]`` timestamp read as UTC,
    its year inferred when absent; None when the date is not a valid one (``Feb 31``)."""
    if year is None:
        resolved = _infer_year(month, day, clock, _utc_now(now))
    elif _valid_date(int(year), month, day, clock):
        resolved = int(year)
    else:
        resolved = None
    if resolved is None:
        return None
    frac = fraction.decode("ascii") if fraction else ""
    return (
        f"{resolved:04d}-{month:02d}-{day:02d}T{clock[0]:02d}:{clock[1]:02d}:{clock[2]:02d}{frac}Z"
    )


def _leap(second: int) -> int:
    """A leap second (60) is valid in RFC 3339 but not in datetime: check it as 59."""
    return 59 if second == 60 else second


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=timezone.utc)
    try:
        return now.astimezone(timezone.utc)
    except OverflowError:  # an aware datetime.min / max: the wall time is close enough
        return now.replace(tzinfo=timezone.utc)


def _valid_date(year: int, month: int, day: int, clock: tuple[int, int, int]) -> bool:
    try:
        datetime(year, month, day, clock[0], clock[1], _leap(clock[2]))
    except ValueError:
        return False
    return True


def _infer_year(month: int, day: int, clock: tuple[int, int, int], now: datetime) -> int | None:
    """The latest year (next, this, last) that puts the date at most a few days after ``now``."""
    # Next year can be at most a few days ahead only for a month earlier than now's.
    years = (
        (now.year + 1, now.year, now.year - 1) if month < now.month else (now.year, now.year - 1)
    )
    for year in years:
        if not 1 <= year <= 9999:
            continue
        try:
            candidate = datetime(
                year, month, day, clock[0], clock[1], _leap(clock[2]), tzinfo=timezone.utc
            )
        except ValueError:
            continue  # Feb 29 in a common year, or an hour of 24: try the next candidate
        if candidate - now <= YEAR_INFERENCE_FUTURE_TOLERANCE:  # no overflow near year 9999
            return year
    return None
