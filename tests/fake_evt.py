"""A fake of pywin32's win32evtlog (the Evt* API), for tests: the Windows Event Log cannot
run here. It models what the reader relies on: channels of events with record numbers that
keep counting, events rendered as Windows' event XML, bookmarks rendered as Windows'
<BookmarkList> XML, EvtSeek relative to a bookmark (strict: fails when the bookmarked event is
gone, as after a clear or wrap), EvtNext in chunks, access denied, and message formatting."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

GUID = "54849625-5478-4994-a5ba-3e3b0328c30d"
ERROR_ACCESS_DENIED = 5
ERROR_NOT_FOUND = 1168
ERROR_EVT_CHANNEL_NOT_FOUND = 15007
ERROR_EVT_MESSAGE_NOT_FOUND = 15027


class EvtError(Exception):
    """Like pywintypes.error: (winerror, funcname, strerror)."""

    def __init__(self, winerror: int, funcname: str, strerror: str) -> None:
        super().__init__(winerror, funcname, strerror)
        self.winerror = winerror
        self.funcname = funcname
        self.strerror = strerror


@dataclass
class FakeEvent:
    record: int
    channel: str
    provider: str
    event_id: int
    level: int
    computer: str
    time: str
    data: dict[str, str]
    message: str | None

    def xml(self) -> str:
        data = "".join(f"<Data Name='{escape(k)}'>{escape(v)}</Data>" for k, v in self.data.items())
        return (
            "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>"
            f"<Provider Name='{escape(self.provider)}' Guid='{{{GUID}}}'/>"
            f"<EventID>{self.event_id}</EventID><Version>0</Version><Level>{self.level}</Level>"
            "<Task>12544</Task><Opcode>0</Opcode><Keywords>0x8010000000000000</Keywords>"
            f"<TimeCreated SystemTime='{self.time}'/><EventRecordID>{self.record}</EventRecordID>"
            "<Correlation/><Execution ProcessID='4' ThreadID='8'/>"
            f"<Channel>{escape(self.channel)}</Channel><Computer>{escape(self.computer)}</Computer>"
            f"<Security/></System><EventData>{data}</EventData></Event>"
        )


@dataclass
class _Handle:
    event: FakeEvent


@dataclass
class _Bookmark:
    channel: str | None = None
    record: int | None = None


@dataclass
class _Query:
    events: list[FakeEvent]
    pos: int = 0


@dataclass
class FakeWin32EvtLog:
    """Stands in for the ``win32evtlog`` module, on one fake host."""

    computer: str = "WIN-01"
    channels: dict[str, list[FakeEvent]] = field(default_factory=dict)
    next_record: dict[str, int] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    explode_after: int | None = None  # raise inside EvtNext after this many events overall
    handed_out: int = 0
    calls: list[str] = field(default_factory=list)

    EvtQueryChannelPath = 0x1
    EvtQueryForwardDirection = 0x100
    EvtSeekRelativeToBookmark = 4
    EvtSeekStrict = 0x10000
    EvtRenderEventXml = 1
    EvtRenderBookmark = 2
    EvtFormatMessageEvent = 1

    # -- the host side ---------------------------------------------------------------------
    def add_channel(self, name: str) -> None:
        self.channels.setdefault(name, [])
        self.next_record.setdefault(name, 1)

    def write(
        self,
        channel: str,
        event_id: int,
        message: str | None,
        *,
        provider: str = "Microsoft-Windows-Security-Auditing",
        level: int = 0,
        data: dict[str, str] | None = None,
    ) -> FakeEvent:
        self.add_channel(channel)
        rec = self.next_record[channel]
        self.next_record[channel] = rec + 1
        ev = FakeEvent(
            rec, channel, provider, event_id, level, self.computer,
            f"2026-11-27T10:{rec // 60 % 60:02d}:{rec % 60:02d}.{rec % 1000:03d}0000Z",
            data or {"TargetUserName": f"user{rec}"}, message,
        )  # fmt: skip
        self.channels[channel].append(ev)
        return ev

    def clear(self, channel: str) -> None:
        """wevtutil cl: every event gone; record numbers keep counting."""
        self.channels[channel] = []

    def wrap(self, channel: str, keep: int) -> None:
        """A full log overwrote its oldest events."""
        self.channels[channel] = self.channels[channel][-keep:]

    # -- the API ---------------------------------------------------------------------------
    def EvtQuery(self, path: str, flags: int, query: str = "*") -> _Query:
        self.calls.append("EvtQuery")
        if path in self.denied:
            raise EvtError(ERROR_ACCESS_DENIED, "EvtQuery", "Access is denied.")
        if path not in self.channels:
            raise EvtError(ERROR_EVT_CHANNEL_NOT_FOUND, "EvtQuery", "The channel was not found.")
        assert flags & self.EvtQueryChannelPath and flags & self.EvtQueryForwardDirection
        events = list(self.channels[path])
        m = re.fullmatch(r"\*\[System\[\(EventID=(\d+)\)\]\]", query)
        if m:
            events = [e for e in events if e.event_id == int(m.group(1))]
        elif query != "*":
            raise EvtError(15001, "EvtQuery", "The specified query is invalid.")
        return _Query(events)

    def EvtCreateBookmark(self, xml: str | None = None) -> _Bookmark:
        if not xml:
            return _Bookmark()
        m = re.search(r"Channel='([^']*)' RecordId='(\d+)'", xml)
        if not m:
            raise EvtError(87, "EvtCreateBookmark", "The parameter is incorrect.")
        return _Bookmark(m.group(1), int(m.group(2)))

    def EvtSeek(
        self, q: _Query, offset: int, flags: int, bm: _Bookmark | None = None, timeout: int = 0
    ) -> None:
        """pywin32's order (ResultSet, Position, Flags, Bookmark, Timeout); Microsoft's rule:
        with EvtSeekStrict, a position outside the result set (the bookmarked event gone, or
        past the last event) fails instead of being clamped."""
        assert isinstance(flags, int) and flags & self.EvtSeekRelativeToBookmark
        assert isinstance(bm, _Bookmark) and timeout == 0
        idx = next((i for i, e in enumerate(q.events) if e.record == bm.record), None)
        target = None if idx is None else idx + offset
        if target is None or not 0 <= target < len(q.events):
            if flags & self.EvtSeekStrict:
                raise EvtError(ERROR_NOT_FOUND, "EvtSeek", "Element not found.")
            target = 0 if target is None else min(max(target, 0), len(q.events))
        q.pos = target

    def EvtNext(self, q: _Query, count: int, timeout: int = -1, flags: int = 0) -> tuple:
        out = []
        for ev in q.events[q.pos : q.pos + count]:
            if self.explode_after is not None and self.handed_out >= self.explode_after:
                self.explode_after = None
                raise EvtError(1722, "EvtNext", "The RPC server is unavailable.")
            out.append(_Handle(ev))
            self.handed_out += 1
        q.pos += len(out)
        return tuple(out)

    def EvtUpdateBookmark(self, bm: _Bookmark, h: _Handle) -> None:
        bm.channel, bm.record = h.event.channel, h.event.record

    def EvtRender(self, obj: _Handle | _Bookmark, flags: int) -> str:
        if flags == self.EvtRenderBookmark:
            assert isinstance(obj, _Bookmark)
            return (
                "<BookmarkList>\r\n  <Bookmark Channel='"
                f"{obj.channel}' RecordId='{obj.record}' IsCurrent='true'/>\r\n</BookmarkList>"
            )
        assert isinstance(obj, _Handle) and flags == self.EvtRenderEventXml
        return obj.event.xml()

    def EvtOpenPublisherMetadata(self, name: str) -> str:
        return name

    def EvtFormatMessage(self, meta: str, h: _Handle, flags: int) -> str:
        if h.event.message is None:
            raise EvtError(ERROR_EVT_MESSAGE_NOT_FOUND, "EvtFormatMessage", "No message.")
        return h.event.message
