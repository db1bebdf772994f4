"""collector.syslog_framing: RFC 6587 frames of a TCP stream → messages, memory bounded."""

from __future__ import annotations

import contextlib
import random

import pytest

from collector.syslog_framing import DEFAULT_MAX_MESSAGE_BYTES, FrameDecoder, FramingError

# Captured from util-linux 2.38.1 `logger -T` (TCP) sending to a listener on 127.0.0.1.
# logger --tcp --octet-count --rfc5424 -t multi -f /dev/stdin <<< $'line a\nline b\nline c'
LOGGER_OCTET_5424 = (
    b"97 <13>1 2026-11-30T14:53:27.766257+00:00 vm multi - - "
    b'[timeQuality tzKnown="1" isSynced="0"] line a'
    b"97 <13>1 2026-11-30T14:53:27.766369+00:00 vm multi - - "
    b'[timeQuality tzKnown="1" isSynced="0"] line b'
    b"97 <13>1 2026-11-30T14:53:27.766398+00:00 vm multi - - "
    b'[timeQuality tzKnown="1" isSynced="0"] line c'
)
# logger --tcp --octet-count --rfc3164 -i -t myapp -p local0.warning "octet 3164"
LOGGER_OCTET_3164 = b"47 <132>Nov 30 14:56:30 vm myapp[8387]: octet 3164"
# logger --tcp --rfc3164 -t multi -f /dev/stdin <<< $'line a\nline b'
LOGGER_NEWLINE_3164 = (
    b"<13>Nov 30 14:53:27 vm multi: line a\n<13>Nov 30 14:53:27 vm multi: line b\n"
)
# logger --tcp --rfc5424 -t myapp -p user.notice "nl 5424"
LOGGER_NEWLINE_5424 = (
    b"<13>1 2026-11-30T14:56:30.279323+00:00 vm myapp - - "
    b'[timeQuality tzKnown="1" isSynced="0"] nl 5424\n'
)


def decode_all(stream: bytes, cuts: list[int], max_message_bytes: int = 1024) -> list[bytes]:
    """Feed ``stream`` cut at ``cuts``, then flush; all the messages, in order."""
    decoder = FrameDecoder(max_message_bytes)
    out: list[bytes] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[previous:cut])
        previous = cut
    return out + decoder.flush()


class TestLoggerStreams:
    def test_octet_counted_rfc5424(self) -> None:
        """logger --octet-count: three back-to-back counted frames, no delimiter between."""
        assert FrameDecoder().feed(LOGGER_OCTET_5424) == [
            b"<13>1 2026-11-30T14:53:27.766257+00:00 vm multi - - "
            b'[timeQuality tzKnown="1" isSynced="0"] line a',
            b"<13>1 2026-11-30T14:53:27.766369+00:00 vm multi - - "
            b'[timeQuality tzKnown="1" isSynced="0"] line b',
            b"<13>1 2026-11-30T14:53:27.766398+00:00 vm multi - - "
            b'[timeQuality tzKnown="1" isSynced="0"] line c',
        ]

    def test_octet_counted_rfc3164(self) -> None:
        """logger --octet-count --rfc3164: the count and its space are removed."""
        assert FrameDecoder().feed(LOGGER_OCTET_3164) == [
            b"<132>Nov 30 14:56:30 vm myapp[8387]: octet 3164"
        ]

    def test_newline_framed_rfc3164(self) -> None:
        """logger --tcp without --octet-count: LF-terminated messages."""
        assert FrameDecoder().feed(LOGGER_NEWLINE_3164) == [
            b"<13>Nov 30 14:53:27 vm multi: line a",
            b"<13>Nov 30 14:53:27 vm multi: line b",
        ]

    def test_newline_framed_rfc5424(self) -> None:
        """logger --tcp --rfc5424: one LF-terminated message."""
        assert FrameDecoder().feed(LOGGER_NEWLINE_5424) == [LOGGER_NEWLINE_5424[:-1]]

    def test_logger_streams_cut_at_every_byte(self) -> None:
        """Every two-read split of the captured streams gives the same messages."""
        for stream in (LOGGER_OCTET_5424, LOGGER_NEWLINE_3164, LOGGER_OCTET_3164):
            whole = decode_all(stream, [])
            for cut in range(len(stream) + 1):
                assert decode_all(stream, [cut]) == whole, cut


class TestNewlineFraming:
    def test_lf_and_crlf_are_removed(self) -> None:
        """The LF and a CR right before it are framing; a CR elsewhere is content."""
        assert FrameDecoder().feed(b"<13>a\n<13>b\r\n<13>c\rd\n") == [
            b"<13>a",
            b"<13>b",
            b"<13>c\rd",
        ]

    def test_blank_lines_are_dropped(self) -> None:
        """Empty lines (keep-alives) are not messages."""
        assert FrameDecoder().feed(b"\n\r\n<13>a\n\n") == [b"<13>a"]

    def test_nul_is_content_not_a_delimiter(self) -> None:
        """NUL bytes stay inside the message; only LF delimits."""
        assert FrameDecoder().feed(b"<13>a\x00<13>b\x00\n") == [b"<13>a\x00<13>b\x00"]

    def test_line_split_across_reads(self) -> None:
        """A message that arrives in three reads is returned once, whole."""
        decoder = FrameDecoder()
        assert decoder.feed(b"<13>he") == []
        assert decoder.buffered_bytes == 6
        assert decoder.feed(b"llo\r") == []
        assert decoder.feed(b"\n<13>x") == [b"<13>hello"]
        assert decoder.buffered_bytes == 5

    def test_leading_zero_is_not_an_octet_count(self) -> None:
        """'0 ' and '012 ' are not octet counts (MSG-LEN has no leading zero)."""
        assert FrameDecoder().feed(b"0 a\n012 b\n") == [b"0 a", b"012 b"]

    def test_ten_digits_are_not_an_octet_count(self) -> None:
        """A digit run longer than 9 is text (an epoch in ms, say): the line is newline-framed."""
        assert FrameDecoder().feed(b"1700000000000 took 5 ms\n99999999999 x\n") == [
            b"1700000000000 took 5 ms",
            b"99999999999 x",
        ]

    def test_digits_not_followed_by_space(self) -> None:
        """Digits followed by anything but a space start a newline-framed message."""
        assert FrameDecoder().feed(b"123: %SYS-5-CONFIG_I\n12\n") == [
            b"123: %SYS-5-CONFIG_I",
            b"12",
        ]


class TestOctetCounting:
    def test_body_may_contain_lf(self) -> None:
        """An octet-counted body keeps its LFs and CRs."""
        assert FrameDecoder().feed(b"9 <13>a\r\nbc") == [b"<13>a\r\nbc"]

    def test_framing_is_detected_per_message(self) -> None:
        """Counted and newline-framed messages may alternate on one connection."""
        assert FrameDecoder().feed(b"5 <13>a<13>b\n5 <13>c\n<13>d\n") == [
            b"<13>a",
            b"<13>b",
            b"<13>c",
            b"<13>d",
        ]

    def test_lf_after_a_counted_frame_is_dropped(self) -> None:
        """Senders that put an LF after each counted frame: the LF is a blank line."""
        assert FrameDecoder().feed(b"5 <13>a\n5 <13>b\n") == [b"<13>a", b"<13>b"]

    def test_count_split_across_reads(self) -> None:
        """Digits at the end of a read wait for the next read to be told apart."""
        decoder = FrameDecoder()
        assert decoder.feed(b"1") == []
        assert decoder.buffered_bytes == 1
        assert decoder.feed(b"0") == []
        assert decoder.feed(b" <13>abc") == []
        assert decoder.buffered_bytes == 7
        assert decoder.feed(b"def1") == [b"<13>abcdef"]
        assert decoder.feed(b"2\n") == [b"12"]

    def test_digits_then_lf_are_a_line(self) -> None:
        """A read ending in digits, then an LF: the digits were a newline-framed message."""
        decoder = FrameDecoder()
        assert decoder.feed(b"12") == []
        assert decoder.feed(b"\n") == [b"12"]

    def test_read_ends_right_after_the_count(self) -> None:
        """A read that ends just after 'N ' holds no body byte yet and still counts N."""
        decoder = FrameDecoder()
        assert decoder.feed(b"5 ") == []
        assert decoder.buffered_bytes == 0
        assert decoder.feed(b"12\n45") == [b"12\n45"]

    def test_frame_of_exactly_the_limit(self) -> None:
        """A counted frame of max_message_bytes is accepted."""
        decoder = FrameDecoder(10)
        assert decoder.feed(b"10 0123456789") == [b"0123456789"]

    def test_count_over_the_limit_is_an_error(self) -> None:
        """A count above max_message_bytes is a FramingError before any body is buffered."""
        decoder = FrameDecoder(65536)
        with pytest.raises(
            FramingError, match=r"^octet count 99999999 exceeds max_message_bytes 65536$"
        ):
            decoder.feed(b"99999999 <13>")
        assert decoder.buffered_bytes == 0


class TestLimits:
    def test_default_limit(self) -> None:
        """The default limit is 64 KiB, the size of one read."""
        assert DEFAULT_MAX_MESSAGE_BYTES == 65536
        assert FrameDecoder().max_message_bytes == 65536

    def test_invalid_limit(self) -> None:
        """max_message_bytes must be a positive int."""
        with pytest.raises(ValueError, match="at least 1"):
            FrameDecoder(0)
        with pytest.raises(TypeError):
            FrameDecoder(True)

    def test_line_of_exactly_the_limit_with_crlf(self) -> None:
        """A line of max_message_bytes is accepted, with or without its CR."""
        decoder = FrameDecoder(4)
        assert decoder.feed(b"abcd\r") == []
        assert decoder.buffered_bytes == 5
        assert decoder.feed(b"\nefgh\n") == [b"abcd", b"efgh"]

    def test_line_over_the_limit_in_one_read(self) -> None:
        """A complete line longer than the limit is a FramingError."""
        with pytest.raises(
            FramingError,
            match=r"^newline-framed message of at least 5 bytes exceeds max_message_bytes 4$",
        ):
            FrameDecoder(4).feed(b"abcde\n")

    def test_endless_line_is_not_buffered(self) -> None:
        """10 MB without an LF: the second 64 KiB read fails, nothing more is held."""
        decoder = FrameDecoder(65536)
        chunk = b"x" * 65536
        assert decoder.feed(chunk) == []
        assert decoder.buffered_bytes == 65536
        with pytest.raises(
            FramingError,
            match=r"^newline-framed message of at least 131072 bytes "
            r"exceeds max_message_bytes 65536$",
        ):
            for _ in range(160):
                decoder.feed(chunk)
        assert decoder.buffered_bytes == 0

    def test_error_is_sticky(self) -> None:
        """After a framing error every feed raises it again; nothing is decoded any more."""
        decoder = FrameDecoder(4)
        with pytest.raises(FramingError):
            decoder.feed(b"abcdefgh")
        with pytest.raises(FramingError, match="at least 8 bytes"):
            decoder.feed(b"<13>ok\n")
        assert decoder.error is not None
        assert str(decoder.error) == (
            "newline-framed message of at least 8 bytes exceeds max_message_bytes 4"
        )

    def test_messages_before_an_error_are_returned_first(self) -> None:
        """Messages completed before the bad frame come back; the error comes with the next call."""
        decoder = FrameDecoder(8)
        assert decoder.feed(b"<13>a\n3 <1>99 x") == [b"<13>a", b"<1>"]
        assert str(decoder.error) == "octet count 99 exceeds max_message_bytes 8"
        with pytest.raises(FramingError, match=r"^octet count 99 exceeds max_message_bytes 8$"):
            decoder.feed(b"more")

    def test_no_error_means_error_is_none(self) -> None:
        """A healthy decoder reports no error."""
        decoder = FrameDecoder()
        decoder.feed(b"<13>a\n")
        assert decoder.error is None

    def test_bytearray_input_gives_bytes(self) -> None:
        """Messages are bytes even when the read went into a bytearray."""
        out = FrameDecoder().feed(bytearray(b"<13>a\n3 <1>"))  # type: ignore[arg-type]
        assert out == [b"<13>a", b"<1>"]
        assert all(type(m) is bytes for m in out)


class TestFlush:
    def test_last_line_without_lf_is_returned(self) -> None:
        """A device that closes after its last message without an LF loses nothing."""
        decoder = FrameDecoder()
        assert decoder.feed(b"<13>a\n<13>last\r") == [b"<13>a"]
        assert decoder.flush() == [b"<13>last"]
        assert decoder.buffered_bytes == 0

    def test_pending_digits_are_a_message(self) -> None:
        """Digits with no space before the close were a (short) newline-framed message."""
        decoder = FrameDecoder()
        assert decoder.feed(b"42") == []
        assert decoder.flush() == [b"42"]

    def test_partial_counted_frame_raises(self) -> None:
        """A counted frame cut by the close is a FramingError naming the counts, and dropped."""
        decoder = FrameDecoder()
        assert decoder.feed(b"50 <13>only ten") == []
        with pytest.raises(FramingError, match=r"^connection closed mid-frame, 12 of 50 bytes$"):
            decoder.flush()
        assert decoder.buffered_bytes == 0
        assert decoder.flush() == []

    def test_flush_twice_and_on_empty(self) -> None:
        """Flushing an empty decoder, or twice, returns nothing."""
        decoder = FrameDecoder()
        assert decoder.flush() == []
        decoder.feed(b"<13>x")
        assert decoder.flush() == [b"<13>x"]
        assert decoder.flush() == []

    def test_flush_raises_an_error_not_yet_raised(self) -> None:
        """A framing error deferred behind returned messages is raised by flush."""
        decoder = FrameDecoder(8)
        assert decoder.feed(b"<13>a\n99 x") == [b"<13>a"]
        with pytest.raises(FramingError, match=r"^octet count 99 exceeds max_message_bytes 8$"):
            decoder.flush()
        assert decoder.error is None

    def test_flush_after_a_raised_error_is_quiet(self) -> None:
        """Once feed raised the error, closing does not raise it again."""
        decoder = FrameDecoder(4)
        with pytest.raises(FramingError):
            decoder.feed(b"abcdefgh")
        assert decoder.flush() == []
        assert decoder.feed(b"<1>\n") == [b"<1>"]  # flushed: a fresh, empty decoder


class TestLyingOctetCount:
    def test_count_larger_than_the_message_swallows_the_next_one(self) -> None:
        """'50 ' then 10 bytes and an LF: 50 bytes are taken, the stream desynchronises."""
        stream = (
            b"50 0123456789\n"  # says 50, has 10 and an LF
            b"<13>second message, its head is eaten by the first\n"
            b"<13>third\n"
        )
        assert FrameDecoder().feed(stream) == [
            b"0123456789\n<13>second message, its head is eaten b",  # 50 bytes
            b"y the first",  # the rest of the second message, read as newline-framed
            b"<13>third",  # back in step at the next LF
        ]

    def test_count_smaller_than_the_message(self) -> None:
        """'3 ' then a longer message: the tail is read as the next frame."""
        assert FrameDecoder().feed(b"3 <13>abc\n<13>d\n") == [b"<13", b">abc", b"<13>d"]

    def test_hostile_streams_stay_bounded_and_raise_only_framing_errors(self) -> None:
        """Random digit/space/LF soup: only FramingError, never more than the limit held."""
        rng = random.Random(6587)
        alphabet = b"0123456789      \n\n\r<>x"
        limit = 64
        for _ in range(3000):
            decoder = FrameDecoder(limit)
            for _ in range(rng.randrange(1, 30)):
                chunk = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 100)))
                try:
                    messages = decoder.feed(chunk)
                except FramingError:
                    decoder.flush()
                    continue
                assert all(0 < len(m) <= limit for m in messages)
                assert decoder.buffered_bytes <= limit + 1
            with contextlib.suppress(FramingError):  # e.g. closed mid-frame
                assert all(0 < len(m) <= limit for m in decoder.flush())
            assert decoder.buffered_bytes == 0

    def test_small_limit_holds_at_most_nine_digits(self) -> None:
        """With a limit below 9, an undecided digit run may still be held whole."""
        decoder = FrameDecoder(2)
        assert decoder.feed(b"123456789") == []
        assert decoder.buffered_bytes == 9
        with pytest.raises(FramingError, match=r"^octet count 123456789 exceeds"):
            decoder.feed(b" ")


def _random_stream(rng: random.Random, count: int) -> tuple[bytes, list[bytes]]:
    """A stream of mixed frames and the messages it holds."""
    parts: list[bytes] = []
    expected: list[bytes] = []
    for _ in range(count):
        body = b"<13>" + bytes(
            rng.choice(b"ab \r\n\x00[]0123456789") for _ in range(rng.randrange(40))
        )
        if rng.random() < 0.5:
            parts.append(b"%d " % len(body) + body)
            expected.append(body)
        else:
            line = body.replace(b"\n", b"").rstrip(b"\r")
            parts.append(line + rng.choice((b"\n", b"\r\n")))
            expected.append(line)
    return b"".join(parts), expected


class TestChunking:
    def test_any_split_gives_the_same_messages(self) -> None:
        """However the stream is cut into reads, the same messages come out in order."""
        rng = random.Random(42)
        for _ in range(500):
            stream, expected = _random_stream(rng, rng.randrange(1, 20))
            cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(0, 12)))
            assert decode_all(stream, cuts) == expected

    def test_byte_by_byte(self) -> None:
        """Reads of one byte each give the same messages as one read."""
        rng = random.Random(7)
        stream, expected = _random_stream(rng, 50)
        assert decode_all(stream, list(range(len(stream)))) == expected
