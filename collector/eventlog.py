"""Windows Event Log channels, through pywin32's modern API (EvtQuery + EvtSeek + EvtNext).

Each poll reads the events after the saved bookmark, renders them to the protocol's fields,
and commits them together with the new bookmark in one transaction, so a crash or restart
resumes exactly after the last committed event. A bookmark whose event is gone (the log was
cleared or wrapped) resumes at the oldest event still there, and the gap is reported.

pywin32 is handed in (``evt``, the ``win32evtlog`` module), so the logic is tested against a
fake of that boundary; it has not yet run on a real Windows host.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog

from collector.committing import Committer
from collector.processing import FILTER_KEYS, Filters, Processing
from collector.spec import ReaderContext
from ila_core.clock import rfc3339_ms
from ila_core.settings import SettingsReader

log = structlog.get_logger("collector")

NS = "{http://schemas.microsoft.com/win/2004/08/events/event}"
ERROR_ACCESS_DENIED = 5
ERROR_PRIVILEGE_NOT_HELD = 1314
ERROR_EVT_CHANNEL_NOT_FOUND = 15007
READ_CHUNK = 100  # events asked of EvtNext at a time
LEVELS = {0: "LogAlways", 1: "Critical", 2: "Error", 3: "Warning", 4: "Information", 5: "Verbose"}


@dataclass(frozen=True, kw_only=True)
class EventLogSource:
    """A Windows Event Log channel, optionally filtered by an XPath query."""

    type_name: ClassVar[str] = "windows_eventlog"
    channel: str
    query: str | None = None
    filters: Filters = field(default_factory=Filters)

    @classmethod
    def from_json(cls, r: SettingsReader) -> EventLogSource:
        r.warn_unknown({"type", "channel", "query", *FILTER_KEYS})
        channel = r.text("channel")
        query = r.raw.get("query")
        if query is not None and not isinstance(query, str):
            raise r.error("query", "must be an XPath string")
        return cls(channel=channel, query=query)

    @property
    def name(self) -> str:
        """The ``source`` its entries carry, as the first agent named it."""
        return f"Windows-{self.channel}"

    def label(self) -> str:
        return self.name

    def to_json(self) -> dict[str, Any]:
        out = {"type": self.type_name, "channel": self.channel, "query": self.query}
        return {**out, **self.filters.to_json()} if self.filters else out

    def runs_on(self, platform: str) -> bool:
        return platform.startswith("win")

    def reader(self, ctx: ReaderContext) -> EventLogReader | None:
        evt = load_win32evtlog()
        if evt is None:
            log.error(
                "eventlog_unavailable",
                channel=self.channel,
                reason="pywin32 is not installed: pip install 'ila-soc-agent[windows]'",
            )
            return None
        return EventLogReader(ctx, self, evt=evt)


@dataclass(frozen=True)
class Position:
    """Where a channel's reading stands: the bookmark XML and the last record number."""

    bookmark: str
    record: int

    def dumps(self) -> str:
        return json.dumps({"bookmark": self.bookmark, "record": self.record})

    @classmethod
    def loads(cls, text: str | None) -> Position | None:
        if not text:
            return None
        d = json.loads(text)
        return cls(str(d["bookmark"]), int(d["record"]))


def render(xml_text: str, message: str | None, read_at: float) -> dict[str, Any]:
    """An event's XML (EvtRenderEventXml) → a protocol entry, log_text as the first agent."""
    root = ET.fromstring(xml_text)
    system = root.find(f"{NS}System")
    if system is None:
        raise ValueError("event XML without <System>")

    def text(tag: str) -> str | None:
        el = system.find(f"{NS}{tag}")  # type: ignore[union-attr]
        return None if el is None or el.text is None else el.text

    provider_el = system.find(f"{NS}Provider")
    provider = "" if provider_el is None else provider_el.get("Name", "")
    event_id = int(text("EventID") or 0)
    record = int(text("EventRecordID") or 0)
    level = int(text("Level") or 0)
    channel = text("Channel") or ""
    computer = text("Computer") or ""
    created = system.find(f"{NS}TimeCreated")
    event_time = None if created is None else created.get("SystemTime")
    if message is None:
        data = root.find(f"{NS}EventData")
        parts = [] if data is None else [d.text or "" for d in data]
        message = "; ".join(p for p in parts if p) or "(no message)"
    uid_src = f"evt@{computer}|{channel}|{record}|{event_time}"
    entry: dict[str, Any] = {
        "log_text": f"[{provider}] EventID:{event_id} - {message}",
        "source": f"Windows-{channel}",
        "timestamp": rfc3339_ms(read_at),
        "event_uid": hashlib.sha256(uid_src.encode()).hexdigest()[:32],
        "event_id": event_id,
        "channel": channel,
        "provider": provider,
        "record_number": record,
        "level": level,
        "level_name": LEVELS.get(level, str(level)),
        "computer": computer,
    }
    if computer:
        entry["hostname"] = computer
    if event_time:
        entry["event_time"] = event_time
    return entry


class EventLogReader:
    """One channel: poll, render, commit events + bookmark together."""

    def __init__(self, ctx: ReaderContext, spec: EventLogSource, *, evt: Any) -> None:
        self.store = ctx.store
        self.spec = spec
        self.evt = evt
        self.batch_size = ctx.batch_size
        self.start_position = ctx.start_position
        self.first_start = ctx.first_start
        self.clock = ctx.clock
        self.poll_interval = ctx.poll_interval
        self.key = f"eventlog:{spec.channel}"
        self.name = f"eventlog-{spec.channel}"
        self.committer = Committer(
            ctx.store,
            ctx.clock,
            spec.name,
            ctx.health,
            Processing(spec.filters, ctx.redactor),
            ctx.counts,
        )
        self._problem: str | None = None
        self._publishers: dict[str, Any] = {}

    def stop(self) -> None:
        """Nothing to interrupt: ``run`` waits on the clock, which shutdown stops."""

    def run(self) -> None:
        while not self.clock.stopped:
            try:
                self.step()
            except Exception as exc:  # pywintypes.error and friends: report once, go on
                self._report(self._describe(exc))
                self.clock.wait(max(self.poll_interval, 5.0))
                continue
            self.clock.wait(self.poll_interval)

    def step(self) -> int:
        """Read and commit everything new; returns the number of events committed."""
        evt = self.evt
        pos = Position.loads(self.store.get_cursor(self.key))
        flags = evt.EvtQueryChannelPath | evt.EvtQueryForwardDirection
        query = evt.EvtQuery(self.spec.channel, flags, self.spec.query or "*")
        bookmark = evt.EvtCreateBookmark(pos.bookmark if pos else None)
        if pos is None and self.first_start and self.start_position == "end":
            self._skip_to_end(query, bookmark)
            self.first_start = False
            return 0
        self.first_start = False
        # Record numbers of a filtered query are not consecutive: gaps only show unfiltered.
        gap_checked = pos is None or (self.spec.query or "*") != "*"
        skip_record: int | None = None
        if pos is not None:
            try:
                # pywin32's order: (ResultSet, Position, Flags, Bookmark). Seek onto the
                # bookmarked event itself: strict fails only if that event is gone (cleared,
                # wrapped), while bookmark+1 would also fail whenever nothing new came.
                evt.EvtSeek(query, 0, evt.EvtSeekRelativeToBookmark | evt.EvtSeekStrict, bookmark)
                skip_record = pos.record
            except Exception as exc:
                # The bookmarked event is gone: the log was cleared or has wrapped.
                log.warning(
                    "eventlog_gap", channel=self.spec.channel, after_record=pos.record,
                    reason=self._describe(exc),
                )  # fmt: skip
                query = evt.EvtQuery(self.spec.channel, flags, self.spec.query or "*")
                gap_checked = True
        total = 0
        while not self.clock.stopped:
            handles = evt.EvtNext(query, READ_CHUNK)
            if skip_record is not None and handles:
                first = render(evt.EvtRender(handles[0], evt.EvtRenderEventXml), "", 0.0)
                if first["record_number"] == skip_record:
                    handles = handles[1:]  # the bookmarked event: already committed
                skip_record = None
                if not handles:
                    continue
            if not handles:
                break
            now = self.clock.wall()
            entries = []
            last_record = pos.record if pos else 0
            for h in handles:
                entry = render(evt.EvtRender(h, evt.EvtRenderEventXml), self._message(h), now)
                if not gap_checked and pos is not None and entry["record_number"] > pos.record + 1:
                    log.warning(
                        "eventlog_gap", channel=self.spec.channel, after_record=pos.record,
                        next_record=entry["record_number"],
                    )  # fmt: skip
                gap_checked = True
                entries.append(entry)
                evt.EvtUpdateBookmark(bookmark, h)
                last_record = entry["record_number"]
            pos = Position(evt.EvtRender(bookmark, evt.EvtRenderBookmark), last_record)
            self._commit(entries, pos)
            total += len(entries)
        if self._problem is not None:
            log.info("eventlog_reading_again", channel=self.spec.channel)
            self._problem = None
        return total

    def _skip_to_end(self, query: Any, bookmark: Any) -> None:
        """start_position "end" at the first start: remember the newest event, send none."""
        evt = self.evt
        last = None
        while handles := evt.EvtNext(query, READ_CHUNK):
            last = handles[-1]
        if last is not None:
            evt.EvtUpdateBookmark(bookmark, last)
            record = render(evt.EvtRender(last, evt.EvtRenderEventXml), "", 0.0)["record_number"]
            pos = Position(evt.EvtRender(bookmark, evt.EvtRenderBookmark), record)
            self._commit([], pos)

    def _message(self, handle: Any) -> str | None:
        """The formatted message from the provider's metadata; None when it has none."""
        evt = self.evt
        try:
            xml_text = evt.EvtRender(handle, evt.EvtRenderEventXml)
            provider = ET.fromstring(xml_text).find(f"{NS}System/{NS}Provider")
            name = "" if provider is None else provider.get("Name", "")
            if name not in self._publishers:
                self._publishers[name] = evt.EvtOpenPublisherMetadata(name)
            text = evt.EvtFormatMessage(self._publishers[name], handle, evt.EvtFormatMessageEvent)
        except Exception:  # no metadata or no message table: fall back to the event data
            return None
        return str(text).strip() if text else None

    def _commit(self, entries: list[dict[str, Any]], pos: Position) -> None:
        # Not committed only when stopping: those events are read again after the restart.
        self.committer.commit_records(
            entries, key=self.key, cursor=pos.dumps(), per_item=self.batch_size
        )

    def _describe(self, exc: Exception) -> str:
        code = getattr(exc, "winerror", None)
        if code in (ERROR_ACCESS_DENIED, ERROR_PRIVILEGE_NOT_HELD):
            return (
                f"access denied to the {self.spec.channel} channel: run the agent as "
                "LocalSystem or a member of 'Event Log Readers' (Security needs it)"
            )
        if code == ERROR_EVT_CHANNEL_NOT_FOUND:
            return f"no channel named {self.spec.channel!r} on this host"
        return f"{type(exc).__name__}: {exc}"

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            log.error("eventlog_problem", channel=self.spec.channel, problem=problem)
            self._problem = problem


def load_win32evtlog() -> Any:
    """The real module, or None (not Windows, or pywin32 missing: said once by the agent)."""
    try:
        import win32evtlog
    except ImportError:
        return None
    return win32evtlog
