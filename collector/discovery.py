"""Configured paths and globs → the files to read now, each with its source name."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any, ClassVar

from collector.multiline import Multiline
from collector.processing import FILTER_KEYS, Filters
from ila_core.settings import SettingsReader


@dataclass(frozen=True, kw_only=True)
class FileSource:
    """A path or glob; ``name`` overrides the ``source`` sent (default: the file's path)."""

    type_name: ClassVar[str] = "file"
    pattern: str
    name: str | None = None
    multiline: Multiline | None = None
    filters: Filters = field(default_factory=Filters)

    @classmethod
    def from_json(cls, r: SettingsReader) -> FileSource:
        r.warn_unknown({"type", "path", "source", "multiline", *FILTER_KEYS})
        path = r.text("path")
        name = r.raw.get("source")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise r.error("source", "must be a non-empty string")
        return cls(
            pattern=r.path("path", path) or path,
            name=name,
            multiline=Multiline.from_json(r, "multiline", r.raw.get("multiline")),
        )

    def label(self) -> str:
        return self.pattern

    def source_of(self, path: str) -> str:
        """The ``source`` its entries carry: the configured name, else the file's path."""
        return self.name or path

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.pattern, "source": self.name}
        if self.multiline is not None:
            out["multiline"] = self.multiline.to_json()
        if self.filters:
            out.update(self.filters.to_json())
        return out

    def runs_on(self, platform: str) -> bool:
        return True


def has_magic(pattern: str) -> bool:
    return glob.has_magic(pattern)


def discover(sources: Iterable[FileSource]) -> dict[str, FileSource]:
    """{path: its source} for every regular file matching a configured path or glob."""
    found: dict[str, FileSource] = {}
    for src in sources:
        paths = sorted(glob.glob(src.pattern)) if has_magic(src.pattern) else [src.pattern]
        for path in paths:
            if path in found or not os.path.isfile(path):
                continue
            found[path] = src
    return found


def matching(sources: Iterable[FileSource], path: str) -> FileSource | None:
    """The first source whose path or glob names ``path``."""
    for src in sources:
        if path == src.pattern or (has_magic(src.pattern) and fnmatch(path, src.pattern)):
            return src
    return None


def watch_dirs(sources: Iterable[FileSource]) -> set[str]:
    """Folders to watch for events: a pattern's folder, or its deepest fixed folder."""
    dirs = set()
    for src in sources:
        d = os.path.dirname(src.pattern)
        while has_magic(d):
            d = os.path.dirname(d)
        dirs.add(d or ".")
    return dirs
