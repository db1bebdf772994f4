"""collector.syslog_format: one syslog message → its header fields, never an exception."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

import pytest

from collector.syslog_format import (
    _HEADER_5424,  # the fast path is checked against the field-by-field reader
    YEAR_INFERENCE_FUTURE_TOLERANCE,
    SyslogFields,
    _header_fields,
    parse,
)

NOW = datetime(2026, 11, 30, 15, 0, 0, tzinfo=timezone.utc)

# Captured from util-linux 2.38.1 `logger` sending to a listener on 127.0.0.1 (the machine's
# clock said 2026-11-30, UTC, hostname "vm"). UDP datagrams, or TCP frames with framing removed.
LOGGER_3164_UDP = b"<132>Nov 30 14:53:25 vm myapp[6965]: hello rfc3164"
# logger --rfc3164 -t myapp -p user.info "nl one", over TCP (newline framing removed)
LOGGER_3164_TCP = b"<14>Nov 30 14:53:27 vm myapp: nl one"
# logger --rfc3164 -p kern.emerg "grüße": logger turns kern into user (PRI 8, not 0)
LOGGER_3164_UTF8 = b"<8>Nov 30 14:56:30 vm myapp: gr\xc3\xbc\xc3\x9fe"
LOGGER_5424_UDP = (
    b"<13>1 2026-11-30T14:53:25.298801+00:00 vm myapp 6966 - "
    b'[timeQuality tzKnown="1" isSynced="0"] hello rfc5424'
)
# logger --rfc5424=notq --msgid ID47 --sd-id exampleSDID@32473 --sd-param 'iut="3"'
#        --sd-param 'eventSource="App\"l\]"' -p auth.err "with sd"
LOGGER_5424_SD = (
    b"<35>1 2026-11-30T14:53:27.750041+00:00 vm myapp - ID47 "
    b'[exampleSDID@32473 iut="3" eventSource="App\\"l\\]"] with sd'
)
# logger --rfc5424=notime,nohost -t app -p daemon.info "no time no host"
LOGGER_5424_NIL = b"<30>1 - - app - - - no time no host"
# logger --rfc5424=notq --msgid ID47 -p mail.crit "grüße ünïcödé", over TCP
LOGGER_5424_UTF8 = (
    b"<18>1 2026-11-30T14:56:30.282205+00:00 vm myapp - ID47 - "
    b"gr\xc3\xbc\xc3\x9fe \xc3\xbcn\xc3\xafc\xc3\xb6d\xc3\xa9"
)


def fields(message: bytes, now: datetime = NOW) -> SyslogFields:
    result = parse(message, now=now)
    assert result is not None
    return result


def msg(message: bytes, now: datetime = NOW) -> bytes:
    """The MSG / CONTENT part, as located by the parser."""
    return message[fields(message, now).msg_start :]


class TestPri:
    def test_missing_pri_is_not_syslog(self) -> None:
        """A message that does not start with <PRI> does not parse."""
        for message in (b"", b"hello", b" <13>hello", b"13>hello", b"<", b"<13", b"<>x"):
            assert parse(message, now=NOW) is None, message

    def test_pri_out_of_range_is_not_syslog(self) -> None:
        """PRI above 191, of more than 3 digits, or not digits does not parse."""
        for message in (b"<192>x", b"<999>x", b"<0013>x", b"<1a>x", b"<-1>x", b"<+1>x"):
            assert parse(message, now=NOW) is None, message

    def test_pri_splits_into_facility_and_severity(self) -> None:
        """PRI is facility * 8 + severity, from 0 to 191."""
        assert (fields(b"<0>x").facility, fields(b"<0>x").severity) == (0, 0)
        assert (fields(b"<191>x").facility, fields(b"<191>x").severity) == (23, 7)
        assert (fields(b"<165>x").facility, fields(b"<165>x").severity) == (20, 5)

    def test_bare_pri_parses_with_no_other_field(self) -> None:
        """A message that is only <PRI> has a facility and a severity and nothing else."""
        assert parse(b"<13>", now=NOW) == SyslogFields(facility=1, severity=5, msg_start=4)


class TestToJson:
    def test_has_exactly_the_contract_keys(self) -> None:
        """to_json() has the keys the agent contract names, and not msg_start."""
        assert fields(LOGGER_5424_UDP).to_json() == {
            "facility": 1,
            "severity": 5,
            "hostname": "vm",
            "app_name": "myapp",
            "procid": "6966",
            "msgid": None,
            "time": "2026-11-30T14:53:25.298801+00:00",
        }

    def test_fields_are_frozen(self) -> None:
        """SyslogFields is an immutable value."""
        parsed = fields(LOGGER_5424_UDP)
        with pytest.raises(AttributeError):
            parsed.hostname = "other"  # type: ignore[misc]


class TestLoggerSamples:
    """Bytes util-linux `logger` really sends."""

    def test_rfc3164_udp(self) -> None:
        """logger --rfc3164 -i: hostname, TAG[PID], BSD time read as UTC of the current year."""
        assert fields(LOGGER_3164_UDP).to_json() == {
            "facility": 16,
            "severity": 4,
            "hostname": "vm",
            "app_name": "myapp",
            "procid": "6965",
            "msgid": None,
            "time": "2026-11-30T14:53:25Z",
        }
        assert msg(LOGGER_3164_UDP) == b"hello rfc3164"

    def test_rfc3164_tag_without_pid(self) -> None:
        """logger --rfc3164 without -i: TAG: with no pid."""
        assert fields(LOGGER_3164_TCP).to_json() == {
            "facility": 1,
            "severity": 6,
            "hostname": "vm",
            "app_name": "myapp",
            "procid": None,
            "msgid": None,
            "time": "2026-11-30T14:53:27Z",
        }
        assert msg(LOGGER_3164_TCP) == b"nl one"

    def test_rfc3164_utf8_content(self) -> None:
        """UTF-8 content does not disturb the header."""
        parsed = fields(LOGGER_3164_UTF8)
        assert (parsed.facility, parsed.severity, parsed.app_name) == (1, 0, "myapp")
        assert msg(LOGGER_3164_UTF8).decode() == "grüße"

    def test_rfc5424_udp(self) -> None:
        """logger --rfc5424 -i: all header fields, nil MSGID, timeQuality SD skipped."""
        assert fields(LOGGER_5424_UDP) == SyslogFields(
            facility=1,
            severity=5,
            hostname="vm",
            app_name="myapp",
            procid="6966",
            msgid=None,
            time="2026-11-30T14:53:25.298801+00:00",
            msg_start=94,
        )
        assert msg(LOGGER_5424_UDP) == b"hello rfc5424"

    def test_rfc5424_structured_data_with_escapes(self) -> None:
        """An escaped quote and an escaped ] inside a PARAM-VALUE do not end the SD."""
        assert fields(LOGGER_5424_SD).to_json() == {
            "facility": 4,
            "severity": 3,
            "hostname": "vm",
            "app_name": "myapp",
            "procid": None,
            "msgid": "ID47",
            "time": "2026-11-30T14:53:27.750041+00:00",
        }
        assert msg(LOGGER_5424_SD) == b"with sd"

    def test_rfc5424_all_nil(self) -> None:
        """logger --rfc5424=notime,nohost: '-' fields become None."""
        assert fields(LOGGER_5424_NIL).to_json() == {
            "facility": 3,
            "severity": 6,
            "hostname": None,
            "app_name": "app",
            "procid": None,
            "msgid": None,
            "time": None,
        }
        assert msg(LOGGER_5424_NIL) == b"no time no host"

    def test_rfc5424_utf8_without_bom(self) -> None:
        """UTF-8 MSG without a BOM starts right after the nil SD."""
        parsed = fields(LOGGER_5424_UTF8)
        assert (parsed.facility, parsed.severity, parsed.msgid) == (2, 2, "ID47")
        assert msg(LOGGER_5424_UTF8).decode() == "grüße ünïcödé"


class TestRfc5424:
    def test_rfc_example_with_bom(self) -> None:
        """RFC 5424 example 1: MSG starts after the UTF-8 BOM."""
        message = (
            b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
            b"\xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8"
        )
        assert fields(message) == SyslogFields(
            facility=4,
            severity=2,
            hostname="mymachine.example.com",
            app_name="su",
            procid=None,
            msgid="ID47",
            time="2003-10-11T22:14:15.003Z",
            msg_start=68,
        )
        assert msg(message) == b"'su root' failed for lonvick on /dev/pts/8"

    def test_rfc_example_with_numeric_offset(self) -> None:
        """RFC 5424 example 2: a microsecond fraction and a negative offset are kept."""
        message = (
            b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - "
            b"%% It's time to make the do-nuts."
        )
        assert fields(message).to_json() == {
            "facility": 20,
            "severity": 5,
            "hostname": "192.0.2.1",
            "app_name": "myproc",
            "procid": "8710",
            "msgid": None,
            "time": "2003-08-24T05:14:15.000003-07:00",
        }
        assert msg(message) == b"%% It's time to make the do-nuts."

    def test_rfc_example_two_sd_elements_and_no_msg(self) -> None:
        """RFC 5424 example 4: two SD-ELEMENTs and no MSG at all."""
        message = (
            b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
            b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
            b'[examplePriority@32473 class="high"]'
        )
        parsed = fields(message)
        assert (parsed.app_name, parsed.msgid, parsed.msg_start) == (
            "evntslog",
            "ID47",
            len(message),
        )

    def test_escaped_backslash_before_closing_quote(self) -> None:
        """A value ending in an escaped backslash ("x\\\\") is closed by the quote after it."""
        message = b'<13>1 - h a - - [id k="x\\\\"][id2 k="]"] body'
        assert msg(message) == b"body"

    def test_lone_bracket_and_quote_in_value(self) -> None:
        """] and [ inside a quoted value are data."""
        message = b'<13>1 - h a - - [id k="a]b[c" j="\\"]"] body'
        assert msg(message) == b"body"

    def test_unterminated_structured_data(self) -> None:
        """Unterminated STRUCTURED-DATA leaves no MSG but keeps the header."""
        message = b'<13>1 - h a p m [id k="never closed] body'
        parsed = fields(message)
        assert (parsed.hostname, parsed.procid, parsed.msgid) == ("h", "p", "m")
        assert parsed.msg_start == len(message)

    def test_missing_structured_data(self) -> None:
        """A sender that omits STRUCTURED-DATA: the rest is MSG."""
        assert msg(b"<13>1 - h a p m hello world") == b"hello world"

    def test_nil_structured_data_and_empty_msg(self) -> None:
        """'-' STRUCTURED-DATA then nothing: MSG is empty."""
        message = b"<13>1 - h a p m -"
        assert fields(message).msg_start == len(message)

    def test_truncated_header(self) -> None:
        """A header cut short leaves the missing fields None."""
        assert fields(b"<13>1 2020-01-02T03:04:05Z host") == SyslogFields(
            facility=1,
            severity=5,
            hostname="host",
            time="2020-01-02T03:04:05Z",
            msg_start=31,
        )

    def test_lowercase_t_and_z_are_normalised(self) -> None:
        """RFC 3339 allows t and z; they come out upper-case."""
        assert fields(b"<13>1 2020-01-02t03:04:05.5z h a - - -").time == "2020-01-02T03:04:05.5Z"

    def test_offset_missing_is_read_as_utc(self) -> None:
        """A timestamp without an offset is read as UTC."""
        assert fields(b"<13>1 2020-01-02T03:04:05.123 h a - - -").time == "2020-01-02T03:04:05.123Z"

    def test_nanosecond_fraction_is_kept_and_longer_is_invalid(self) -> None:
        """Up to 9 fraction digits are kept as given; 10 make the timestamp invalid."""
        assert fields(b"<13>1 2020-01-02T03:04:05.123456789+01:00 h - - - -").time == (
            "2020-01-02T03:04:05.123456789+01:00"
        )
        assert fields(b"<13>1 2020-01-02T03:04:05.1234567890+01:00 h - - - -").time is None

    def test_leap_second_is_kept(self) -> None:
        """Second 60 is valid RFC 3339 and is kept."""
        assert fields(b"<13>1 2016-12-31T23:59:60Z h - - - -").time == "2016-12-31T23:59:60Z"
        assert fields(b"<13>1 2016-12-31T23:59:61Z h - - - -").time is None

    def test_invalid_timestamp_leaves_time_none_and_other_fields(self) -> None:
        """An impossible date or offset is no time; the fields after it still parse."""
        for stamp in (
            b"2020-02-30T00:00:00Z",
            b"2020-01-02T25:00:00Z",
            b"2020-01-02T03:04:05+24:00",
        ):
            parsed = fields(b"<13>1 " + stamp + b" host app 42 ID - m")
            assert (parsed.time, parsed.hostname, parsed.procid) == (None, "host", "42"), stamp

    def test_fields_longer_than_rfc_maximum_are_none(self) -> None:
        """HOSTNAME > 255, APP-NAME > 48, PROCID > 128, MSGID > 32 bytes are not those fields."""
        message = b"<13>1 - %s %s %s %s - m" % (b"h" * 256, b"a" * 49, b"p" * 129, b"i" * 33)
        assert fields(message) == SyslogFields(facility=1, severity=5, msg_start=len(message) - 1)
        at_limit = b"<13>1 - %s %s %s %s - m" % (b"h" * 255, b"a" * 48, b"p" * 128, b"i" * 32)
        parsed = fields(at_limit)
        assert (len(parsed.hostname or ""), len(parsed.app_name or "")) == (255, 48)
        assert (len(parsed.procid or ""), len(parsed.msgid or "")) == (128, 32)

    def test_doubled_separators_are_tolerated(self) -> None:
        """Extra spaces between header fields do not shift the fields."""
        parsed = fields(b"<13>1  2020-01-02T03:04:05Z  host  app  - ID - m")
        assert (parsed.time, parsed.hostname, parsed.app_name, parsed.msgid) == (
            "2020-01-02T03:04:05Z",
            "host",
            "app",
            "ID",
        )

    def test_non_utf8_fields_are_replaced(self) -> None:
        """Bytes that are not UTF-8 become U+FFFD in the fields."""
        assert fields(b"<13>1 - h\xffst \xc3app - - -").hostname == "h\ufffdst"
        assert fields(b"<13>1 - h\xffst \xc3app - - -").app_name == "\ufffdapp"

    def test_version_must_be_followed_by_a_timestamp(self) -> None:
        """'<13>1 apple' is RFC 3164 content that starts with '1', not version 1."""
        assert parse(b"<13>1 apple", now=NOW) == SyslogFields(facility=1, severity=5, msg_start=4)


class TestRfc3164:
    def test_no_hostname(self) -> None:
        """A TAG right after the timestamp means the sender put no hostname."""
        assert fields(b"<13>Nov 30 14:53:27 sshd[42]: Accepted key").to_json() == {
            "facility": 1,
            "severity": 5,
            "hostname": None,
            "app_name": "sshd",
            "procid": "42",
            "msgid": None,
            "time": "2026-11-30T14:53:27Z",
        }

    def test_single_digit_day_padded_with_a_space(self) -> None:
        """'Nov  3', 'Nov 3' and 'Nov 03' are the same day."""
        for stamp in (b"Nov  3", b"Nov 3", b"Nov 03"):
            parsed = fields(b"<13>" + stamp + b" 01:02:03 host app: x")
            assert (parsed.time, parsed.hostname, parsed.app_name) == (
                "2026-11-03T01:02:03Z",
                "host",
                "app",
            ), stamp

    def test_month_name_is_case_insensitive(self) -> None:
        """NOV and nov are November."""
        assert fields(b"<13>NOV 30 01:02:03 h a: x").time == "2026-11-30T01:02:03Z"
        assert fields(b"<13>nov 30 01:02:03 h a: x").time == "2026-11-30T01:02:03Z"

    def test_iso_timestamp_rsyslog_high_precision(self) -> None:
        """rsyslog's high-precision format: an RFC 3339 timestamp in place of the BSD one."""
        message = b"<13>2024-01-02T03:04:05.123456+01:00 host app[1]: msg"
        assert fields(message).to_json() == {
            "facility": 1,
            "severity": 5,
            "hostname": "host",
            "app_name": "app",
            "procid": "1",
            "msgid": None,
            "time": "2024-01-02T03:04:05.123456+01:00",
        }
        assert msg(message) == b"msg"

    def test_no_timestamp_at_all(self) -> None:
        """'<13>hello' has a PRI and nothing else: the rest is content."""
        assert parse(b"<13>hello", now=NOW) == SyslogFields(facility=1, severity=5, msg_start=4)

    def test_no_timestamp_word_with_colon_is_content(self) -> None:
        """Without a timestamp, 'Error: disk full' is content, not a TAG."""
        assert parse(b"<11>Error: disk full", now=NOW) == SyslogFields(
            facility=1, severity=3, msg_start=4
        )

    def test_no_timestamp_tag_with_pid_is_read(self) -> None:
        """Without a timestamp, the unambiguous 'app[pid]:' is still read as a TAG."""
        message = b"<13>app[12]: hello"
        parsed = fields(message)
        assert (parsed.hostname, parsed.app_name, parsed.procid, parsed.time) == (
            None,
            "app",
            "12",
            None,
        )
        assert msg(message) == b"hello"

    def test_cisco_sequence_and_unsynchronised_clock(self) -> None:
        """Cisco '<189>123: *Mar  1 00:00:00.123: %SYS-5-CONFIG_I: ...' parses what it can."""
        message = (
            b"<189>123: *Mar  1 00:00:00.123: %SYS-5-CONFIG_I: Configured from console by vty0"
        )
        assert fields(message).to_json() == {
            "facility": 23,
            "severity": 5,
            "hostname": None,
            "app_name": "%SYS-5-CONFIG_I",
            "procid": None,
            "msgid": None,
            "time": "2026-03-01T00:00:00.123Z",
        }
        assert msg(message) == b"Configured from console by vty0"

    def test_explicit_year_in_bsd_timestamp(self) -> None:
        """'Mmm dd yyyy hh:mm:ss' (Cisco 'service timestamps ... year') uses the given year."""
        assert fields(b"<189>12: Mar  1 2019 10:11:12: %LINK-3-UPDOWN: x").time == (
            "2019-03-01T10:11:12Z"
        )

    def test_hostname_only(self) -> None:
        """A timestamp and a hostname and nothing else."""
        assert parse(b"<13>Nov 30 14:53:27 vm", now=NOW) == SyslogFields(
            facility=1, severity=5, hostname="vm", time="2026-11-30T14:53:27Z", msg_start=22
        )

    def test_plain_words_after_hostname_are_content(self) -> None:
        """After the hostname, a word with no colon or [pid] is content, not a TAG."""
        message = b"<13>Nov 30 14:53:27 vm hello world"
        parsed = fields(message)
        assert (parsed.hostname, parsed.app_name) == ("vm", None)
        assert msg(message) == b"hello world"

    def test_tag_pid_without_colon(self) -> None:
        """'app[pid]' without a colon is still a TAG."""
        parsed = fields(b"<13>Nov 30 14:53:27 vm app[7] x")
        assert (parsed.app_name, parsed.procid) == ("app", "7")

    def test_slash_in_tag(self) -> None:
        """Postfix-style 'postfix/smtpd[123]:' tags keep their slash."""
        parsed = fields(b"<22>Nov 30 14:53:27 mx postfix/smtpd[123]: connect")
        assert (parsed.hostname, parsed.app_name, parsed.procid) == ("mx", "postfix/smtpd", "123")

    def test_impossible_date_keeps_hostname(self) -> None:
        """'Feb 30' has the shape of a timestamp: no time, but the hostname is read."""
        parsed = fields(b"<13>Feb 30 01:02:03 host app: x")
        assert (parsed.time, parsed.hostname, parsed.app_name) == (None, "host", "app")

    def test_leap_second_kept_and_second_61_rejected(self) -> None:
        """A BSD ':60' second is kept; ':61' is no time, but the hostname is still read."""
        assert fields(b"<13>Jun 30 23:59:60 host app: x").time == "2026-06-30T23:59:60Z"
        parsed = fields(b"<13>Jun 30 23:59:61 host app: x")
        assert (parsed.time, parsed.hostname) == (None, "host")

    def test_space_after_pri(self) -> None:
        """A space between PRI and the timestamp is tolerated."""
        assert fields(b"<13> Nov 30 01:02:03 host app: x").hostname == "host"

    def test_ipv6_hostname(self) -> None:
        """An IPv6 address as hostname is not mistaken for a TAG."""
        parsed = fields(b"<13>Nov 30 01:02:03 fe80::1 app: x")
        assert (parsed.hostname, parsed.app_name) == ("fe80::1", "app")

    def test_non_utf8_tag_is_replaced(self) -> None:
        """A TAG that is not UTF-8 is decoded with replacement characters."""
        assert fields(b"<13>Nov 30 01:02:03 host \xffapp: x").app_name == "\ufffdapp"

    def test_overlong_hostname_is_content(self) -> None:
        """A first word longer than 255 bytes is not a hostname."""
        message = b"<13>Nov 30 01:02:03 " + b"h" * 300 + b" app: x"
        parsed = fields(message)
        assert (parsed.hostname, parsed.app_name, parsed.msg_start) == (None, None, 20)


class TestYearInference:
    def stamp(self, text: bytes, now: datetime) -> str | None:
        return fields(b"<13>" + text + b" host app: x", now).time

    def test_same_year(self) -> None:
        """A date earlier this year is this year."""
        assert self.stamp(b"Jun 15 12:00:00", NOW) == "2026-06-15T12:00:00Z"

    def test_december_message_read_in_january(self) -> None:
        """A December message read in early January is from last year."""
        now = datetime(2027, 1, 2, 0, 0, tzinfo=timezone.utc)
        assert self.stamp(b"Dec 31 23:59:59", now) == "2026-12-31T23:59:59Z"

    def test_january_message_read_on_new_years_eve(self) -> None:
        """A 'Jan  1' message from a clock slightly ahead on 31 December is next year."""
        now = datetime(2026, 12, 31, 23, 59, 30, tzinfo=timezone.utc)
        assert self.stamp(b"Jan  1 00:00:10", now) == "2027-01-01T00:00:10Z"

    def test_future_tolerance_boundary(self) -> None:
        """Up to the tolerance ahead of now is this year; further ahead is last year."""
        assert timedelta(days=7) == YEAR_INFERENCE_FUTURE_TOLERANCE
        now = datetime(2026, 6, 1, 0, 0, 0, tzinfo=timezone.utc)
        assert self.stamp(b"Jun  8 00:00:00", now) == "2026-06-08T00:00:00Z"
        assert self.stamp(b"Jun  8 00:00:01", now) == "2025-06-08T00:00:01Z"

    def test_feb_29_goes_to_the_last_leap_year(self) -> None:
        """Feb 29 read in a common year belongs to the year before, if that was leap."""
        assert self.stamp(b"Feb 29 10:00:00", datetime(2025, 1, 10, tzinfo=timezone.utc)) == (
            "2024-02-29T10:00:00Z"
        )
        assert self.stamp(b"Feb 29 10:00:00", datetime(2024, 3, 1, tzinfo=timezone.utc)) == (
            "2024-02-29T10:00:00Z"
        )
        assert self.stamp(b"Feb 29 10:00:00", datetime(2026, 3, 1, tzinfo=timezone.utc)) is None

    def test_naive_now_is_utc_and_aware_now_is_converted(self) -> None:
        """A naive now is taken as UTC; an aware one is converted to UTC first."""
        naive = datetime(2027, 1, 1, 0, 30)
        assert self.stamp(b"Dec 31 23:00:00", naive) == "2026-12-31T23:00:00Z"
        # 2026-12-31 20:00 at UTC-5 is 2027-01-01 01:00 UTC: 'Jan  5' is this (2027) year.
        aware = datetime(2026, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
        assert self.stamp(b"Jan  5 00:00:00", aware) == "2027-01-05T00:00:00Z"

    def test_default_now_is_the_current_time(self) -> None:
        """Without now, the year comes from the current clock."""
        yesterday = datetime.now(timezone.utc) - timedelta(days=1)
        text = yesterday.strftime("%b %d %H:%M:%S").encode()
        parsed = parse(b"<13>" + text + b" host app: x")
        assert parsed is not None
        assert parsed.time == yesterday.strftime("%Y-%m-%dT%H:%M:%SZ")


# Inputs of 1 MB built to hit every loop of the parser with the worst byte for it.
_TRICKY_UNITS = (b"[]", b"[", b"]", b'"', b'\\"', b"\\", b" ", b"-", b"<", b":", b"a=", b"x")
_TRICKY_PREFIXES = (
    b"<13>1 - - - - - ",
    b'<13>1 - - - - - [x a="',
    b"<13>1 ",
    b"<13>Nov 30 14:53:25 ",
    b"<13>Nov 30 14:53:25 host ",
    b"<189>123: ",
    b"<13>",
)


class TestRobustness:
    def test_random_bytes_never_raise(self) -> None:
        """20,000 random byte strings (fixed seed) parse or return None, never raise."""
        rng = random.Random(5424)
        for _ in range(20_000):
            data = rng.randbytes(rng.randrange(0, 200))
            result = parse(data, now=NOW)
            assert result is None or isinstance(result, SyslogFields)

    def test_random_bytes_after_a_valid_pri_never_raise(self) -> None:
        """Random tails after a valid PRI always parse, with the PRI's facility and severity."""
        rng = random.Random(3164)
        alphabet = b'<>[]"\\=- :.*0123456789TZ+abcNovDec\xef\xbb\xbf\xff\n\x00'
        for _ in range(20_000):
            pri = rng.randrange(192)
            tail = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
            result = parse(b"<%d>" % pri + tail, now=NOW)
            assert result is not None
            assert (result.facility, result.severity) == divmod(pri, 8)
            assert 0 <= result.msg_start <= len(tail) + len(b"<%d>" % pri)

    def test_mutated_real_messages_never_raise(self) -> None:
        """Real messages with random bytes replaced, inserted or cut always parse or give None."""
        rng = random.Random(6587)
        samples = (LOGGER_3164_UDP, LOGGER_5424_UDP, LOGGER_5424_SD, LOGGER_5424_NIL)
        for _ in range(20_000):
            data = bytearray(rng.choice(samples))
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(data) + 1)
                action = rng.randrange(3)
                if action == 0 and at < len(data):
                    data[at] = rng.randrange(256)
                elif action == 1:
                    data[at:at] = rng.randbytes(rng.randrange(1, 4))
                else:
                    del data[at:]
            result = parse(bytes(data), now=NOW)
            assert result is None or 0 <= result.msg_start <= len(data)

    @pytest.mark.parametrize("prefix", _TRICKY_PREFIXES)
    def test_one_megabyte_of_tricky_bytes_is_fast(self, prefix: bytes) -> None:
        """A 1 MB message of repeated tricky characters parses in well under a second."""
        for unit in _TRICKY_UNITS:
            data = prefix + unit * (1_000_000 // len(unit))
            started = time.perf_counter()
            result = parse(data, now=NOW)
            elapsed = time.perf_counter() - started
            assert result is not None
            assert elapsed < 0.5, (prefix, unit, elapsed)

    def test_huge_fields_stay_small(self) -> None:
        """A 1 MB header token does not become a 1 MB field."""
        data = b"<13>1 - " + b"h" * 1_000_000 + b" app - - - m"
        parsed = fields(data)
        assert (parsed.hostname, parsed.app_name, parsed.msg_start) == (None, "app", len(data) - 1)

    def test_one_match_header_agrees_with_field_by_field_reading(self) -> None:
        """Where the one-regex RFC 5424 header path applies, it reads what the loop reads."""
        rng = random.Random(5425)
        tokens = [b"-", b"a", b"\xff", b"2024-01-02T03:04:05Z"] + [
            b"x" * size for size in (32, 33, 40, 41, 48, 49, 128, 129, 255, 256)
        ]
        agreed = 0
        for _ in range(20_000):
            data = b"".join(
                rng.choice((b" ", b"  ", b"")) + rng.choice(tokens) for _ in range(rng.randrange(8))
            ) + rng.choice((b"", b" ", b" rest"))
            header = _HEADER_5424.match(data)
            if header is not None and (header.end() == len(data) or data[header.end()] == 0x20):
                one_match = [None if token == b"-" else token for token in header.groups()]
                assert (one_match, header.end() + 1) == _header_fields(data, 0), data
                agreed += 1
        assert agreed > 100

    def test_accepts_bytearray_and_memoryview(self) -> None:
        """Bytes-like input parses as the same bytes would."""
        expected = fields(LOGGER_3164_UDP)
        assert parse(bytearray(LOGGER_3164_UDP), now=NOW) == expected  # type: ignore[arg-type]
        assert parse(memoryview(LOGGER_3164_UDP), now=NOW) == expected  # type: ignore[arg-type]


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is optional; the seeded fuzz tests above always run
    pass
else:

    class TestHypothesis:
        @settings(max_examples=2000, deadline=None)
        @given(st.binary(max_size=300))
        def test_any_bytes(self, data: bytes) -> None:
            """Any bytes parse or return None, never raise."""
            result = parse(data, now=NOW)
            assert result is None or 0 <= result.msg_start <= len(data)

        @settings(max_examples=2000, deadline=None)
        @given(st.integers(0, 191), st.binary(max_size=300))
        def test_any_tail_after_pri(self, pri: int, tail: bytes) -> None:
            """Any bytes after a valid PRI parse with that PRI."""
            result = parse(b"<%d>" % pri + tail, now=NOW)
            assert result is not None
            assert (result.facility, result.severity) == divmod(pri, 8)
