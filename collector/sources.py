"""Every source type the config may name, and ``log_sources`` parsed into their specs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from collector.discovery import FileSource
from collector.eventlog import EventLogSource
from collector.journald import JournaldSource
from collector.processing import Filters
from collector.syslog_source import SyslogSource
from ila_core.settings import SettingsReader, kind, resolve

Source = FileSource | EventLogSource | JournaldSource | SyslogSource

# ``"type"`` in a log_sources item → its spec. A new source type is one more line here.
SOURCE_TYPES: dict[str, type[Source]] = {
    cls.type_name: cls for cls in (FileSource, EventLogSource, JournaldSource, SyslogSource)
}

DEFAULT_LINUX_SOURCES = ("/var/log/syslog", "/var/log/auth.log", "/var/log/secure")
DEFAULT_WINDOWS_CHANNELS = ("Security", "System", "Application")


def parse_source(r: SettingsReader, key: str, item: Any) -> Source:
    """One item of ``log_sources``: a path or glob, or an object with a ``type``."""
    if isinstance(item, str):
        if not item.strip():
            raise r.error(key, "must not be empty")
        return FileSource(pattern=resolve(r.base, item))
    if not isinstance(item, dict):
        raise r.error(key, f"must be a path or an object, got {kind(item)}")
    type_name = item.get("type", FileSource.type_name)
    spec = SOURCE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if spec is None:
        known = ", ".join(SOURCE_TYPES)
        raise r.error(f"{key}.type", f"unknown source type {json.dumps(type_name)} ({known})")
    parsed = spec.from_json(r.nested(key, item))
    filters = Filters.from_json(r, key, item)  # include/exclude: on any source
    if not filters:
        return parsed
    if "filters" not in {f.name for f in dataclasses.fields(parsed)}:
        raise r.error(f"{key}.include", f"is not supported by {parsed.type_name} sources yet")
    return dataclasses.replace(parsed, filters=filters)


def parse_sources(r: SettingsReader, platform: str) -> tuple[tuple[Source, ...], tuple[str, ...]]:
    """``log_sources`` in either form → the sources for this platform, and those ignored.

    The first agent's form is ``{"linux": [...], "windows": [...]}``, where a plain string in
    the windows list names an Event Log channel.
    """
    raw = r.raw.get("log_sources")
    if raw is None:
        raw = {"linux": list(DEFAULT_LINUX_SOURCES), "windows": list(DEFAULT_WINDOWS_CHANNELS)}
    items: list[tuple[str, Source, bool]] = []  # (key, spec, listed for this platform)
    is_windows = platform.startswith("win")
    if isinstance(raw, dict):
        unknown = set(raw) - {"linux", "windows"}
        if unknown:
            raise r.error("log_sources", f"unknown platform keys {sorted(unknown)}")
        for plat in ("linux", "windows"):
            lst = raw.get(plat) or []
            key = f"log_sources.{plat}"
            if not isinstance(lst, list):
                raise r.error(key, f"must be a list, got {kind(lst)}")
            mine = (plat == "windows") == is_windows
            for i, item in enumerate(lst):
                if plat == "windows" and isinstance(item, str):
                    src: Source = EventLogSource(channel=item)
                else:
                    src = parse_source(r, f"{key}[{i}]", item)
                items.append((key, src, mine))
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            src = parse_source(r, f"log_sources[{i}]", item)
            items.append(("log_sources", src, src.runs_on(platform)))
    else:
        raise r.error("log_sources", f"must be an object or a list, got {kind(raw)}")
    kept = tuple(src for _, src, mine in items if mine)
    ignored = tuple(src.label() for _, src, mine in items if not mine)
    return kept, ignored
