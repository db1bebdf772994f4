"""The systemd journal, read through `journalctl --output=json --follow` (no compiled
dependency). Entries are committed with the journal cursor after them, in one transaction;
a restart continues with `--after-cursor`, so nothing is skipped and nothing repeated."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import selectors
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog

from collector.committing import Committer
from collector.processing import FILTER_KEYS, Filters, Processing
from collector.spec import ReaderContext
from ila_core.clock import rfc3339_ms
from ila_core.settings import SettingsReader

log = structlog.get_logger("collector")

IDLE_COMMIT = 0.2  # seconds without new entries before a partial chunk is committed
RETRY_MIN, RETRY_MAX = 1.0, 30.0


@dataclass(frozen=True, kw_only=True)
class JournaldSource:
    """The systemd journal, optionally filtered and read from a directory."""

    type_name: ClassVar[str] = "journald"
    matches: tuple[str, ...] = ()
    directory: str | None = None
    filters: Filters = field(default_factory=Filters)

    @classmethod
    def from_json(cls, r: SettingsReader) -> JournaldSource:
        r.warn_unknown({"type", "matches", "directory", *FILTER_KEYS})
        matches = r.raw.get("matches", [])
        if not isinstance(matches, list) or not all(
            isinstance(m, str) and "=" in m for m in matches
        ):
            raise r.error("matches", 'must be a list of "FIELD=value" strings')
        directory = r.raw.get("directory")
        if directory is not None and not isinstance(directory, str):
            raise r.error("directory", "must be a path or null")
        return cls(
            matches=tuple(matches), directory=r.path("directory", None) if directory else None
        )

    def label(self) -> str:
        return "journald" + (f":{self.directory}" if self.directory else "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type_name, "matches": list(self.matches), "directory": self.directory,
        }  # fmt: skip
        return {**out, **self.filters.to_json()} if self.filters else out

    def runs_on(self, platform: str) -> bool:
        return not platform.startswith("win")

    def reader(self, ctx: ReaderContext) -> JournalReader:
        return JournalReader(ctx, self)


def source_key(spec: JournaldSource) -> str:
    """Stable name of this journal source (its cursor row and its event_uids)."""
    ident = json.dumps([spec.directory, sorted(spec.matches)])
    return "journald:" + hashlib.sha256(ident.encode()).hexdigest()[:16]


def to_entry(rec: dict[str, Any], read_at: float) -> dict[str, Any]:
    """A journal record → a protocol entry; byte-array messages are decoded like file lines."""
    msg = rec.get("MESSAGE", "")
    entry: dict[str, Any] = {}
    if isinstance(msg, list):  # journalctl gives non-UTF-8 (or binary) fields as byte arrays
        raw = bytes(b & 0xFF for b in msg if isinstance(b, int))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            entry["raw_b64"] = base64.b64encode(raw).decode("ascii")
    elif msg is None:
        text = ""
    else:
        text = str(msg)
    source = rec.get("_SYSTEMD_UNIT") or rec.get("SYSLOG_IDENTIFIER") or "journald"
    cursor = str(rec["__CURSOR"])
    entry.update(
        {
            "log_text": text,
            "source": str(source),
            "timestamp": rfc3339_ms(read_at),
            "event_uid": hashlib.sha256(f"journal@{cursor}".encode()).hexdigest()[:32],
        }
    )
    if isinstance(rec.get("_HOSTNAME"), str):
        entry["hostname"] = rec["_HOSTNAME"]
    realtime = rec.get("__REALTIME_TIMESTAMP")
    if isinstance(realtime, str) and realtime.isdigit():
        entry["event_time"] = rfc3339_ms(int(realtime) / 1e6)
    for journal_field, name in (
        ("PRIORITY", "priority"),
        ("_PID", "pid"),
        ("SYSLOG_IDENTIFIER", "syslog_identifier"),
        ("_SYSTEMD_UNIT", "unit"),
    ):
        value = rec.get(journal_field)
        if isinstance(value, str):
            entry[name] = value
    return entry


class JournalReader:
    """One journal source: runs journalctl, commits entries + cursor, restarts it on failure."""

    def __init__(
        self, ctx: ReaderContext, spec: JournaldSource, *, journalctl: str = "journalctl"
    ) -> None:
        self.store = ctx.store
        self.spec = spec
        self.batch_size = ctx.batch_size
        self.start_position = ctx.start_position
        self.first_start = ctx.first_start
        self.clock = ctx.clock
        self.journalctl = journalctl
        self.key = source_key(spec)
        self.committer = Committer(
            ctx.store,
            ctx.clock,
            spec.label(),
            ctx.health,
            Processing(spec.filters, ctx.redactor),
            ctx.counts,
        )
        self.name = spec.label()
        self.proc: subprocess.Popen[bytes] | None = None
        self._problem: str | None = None

    def _base_args(self) -> list[str]:
        args = [self.journalctl, "--output=json", "--no-pager"]
        if self.spec.directory:
            args.append(f"--directory={self.spec.directory}")
        return args

    def _command(self, cursor: str | None) -> list[str]:
        # --no-tail always: with --follow, journalctl would otherwise show only the last 10
        # entries, also after --after-cursor.
        args = [*self._base_args(), "--follow", "--no-tail"]
        if cursor:
            args.append(f"--after-cursor={cursor}")
        return args + list(self.spec.matches)

    def _tail_cursor(self) -> str | None:
        """The newest matching entry's cursor: where start_position "end" begins."""
        out = subprocess.run(
            [*self._base_args(), "--lines=1", *self.spec.matches],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        for line in out.stdout.splitlines()[-1:]:
            return str(json.loads(line)["__CURSOR"])
        return None

    def run(self) -> None:
        delay = RETRY_MIN
        while not self.clock.stopped:
            try:
                ok = self._run_once()
            except FileNotFoundError:
                self._report(f"{self.journalctl} not found: install systemd's journalctl")
                ok = False
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                self._report(f"journalctl failed: {exc}")
                ok = False
            if self.clock.stopped:
                break
            delay = RETRY_MIN if ok else min(RETRY_MAX, delay * 2)
            self.clock.wait(delay)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def _run_once(self) -> bool:
        """One journalctl process, until it ends or we stop; True when it ran cleanly."""
        if shutil.which(self.journalctl) is None and not os.path.isabs(self.journalctl):
            raise FileNotFoundError(self.journalctl)
        if self.spec.directory and not os.path.isdir(self.spec.directory):
            self._report(f"journal directory {self.spec.directory} does not exist (waiting)")
            return False
        cursor = self.store.get_cursor(self.key)
        if cursor is None and self.first_start and self.start_position == "end":
            cursor = self._tail_cursor()
            if cursor is not None:
                self.store.commit_records(
                    [], key=self.key, source=self.name, cursor=cursor, per_item=self.batch_size
                )
        self.first_start = False
        # stderr to a file, not a pipe: a long --follow that warns a lot must never block.
        with tempfile.TemporaryFile() as errors:
            return self._follow(cursor, errors)

    def _follow(self, cursor: str | None, errors: Any) -> bool:
        self.proc = subprocess.Popen(self._command(cursor), stdout=subprocess.PIPE, stderr=errors)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        pending: list[dict[str, Any]] = []
        last_cursor: str | None = None
        partial = b""
        eof = False
        try:
            while not self.clock.stopped and not eof:
                ready = sel.select(timeout=IDLE_COMMIT)
                if ready:
                    data = os.read(self.proc.stdout.fileno(), 1 << 20)
                    if not data:
                        eof = True
                    lines = (partial + data).split(b"\n")
                    partial = lines.pop()
                    now = self.clock.wall()
                    for line in lines:
                        if not line.strip():
                            continue
                        rec = json.loads(line)
                        pending.append(to_entry(rec, now))
                        last_cursor = str(rec["__CURSOR"])
                if pending and (len(pending) >= self.batch_size or not ready or eof):
                    assert last_cursor is not None
                    self._commit(pending, last_cursor)
                    pending = []
                    if self._problem is not None:
                        log.info("journal_reading_again", source=self.name)
                        self._problem = None
            if pending and last_cursor is not None:
                self._commit(pending, last_cursor)  # stopping: keep what was read
        finally:
            sel.close()
            self.stop()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.clock.stopped:
            return True
        errors.seek(0, os.SEEK_END)
        errors.seek(max(0, errors.tell() - 2000))
        err = errors.read().decode("utf-8", "replace").strip()
        self._report(f"journalctl exited with {self.proc.returncode}: {err[-300:]}")
        return False

    def _commit(self, entries: list[dict[str, Any]], cursor: str) -> None:
        # Not committed only when stopping: those entries are read again after the restart.
        self.committer.commit_records(
            entries, key=self.key, cursor=cursor, per_item=self.batch_size
        )

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            log.error("journal_problem", source=self.name, problem=problem)
            self._problem = problem
