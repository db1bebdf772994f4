"""Configured paths and globs → the files to read now, each with its source name."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from ila_core.settings import SettingsReader


@dataclass(frozen=True, kw_only=True)
class FileSource:
    """A path or glob; ``name`` overrides the ``source`` sent (default: the file's path)."""

    type_name: ClassVar[str] = "file"
    pattern: str
    name: str | None = None

    @classmethod
    def from_json(cls, r: SettingsReader) -> FileSource:
        r.warn_unknown({"type", "path", "source"})
        path = r.text("path")
        name = r.raw.get("source")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise r.error("source", "must be a non-empty string")
        return cls(pattern=r.path("path", path) or path, name=name)

    def label(self) -> str:
        return self.pattern

    def to_json(self) -> dict[str, Any]:
        return {"path": self.pattern, "source": self.name}

    def runs_on(self, platform: str) -> bool:
        return True


def has_magic(pattern: str) -> bool:
    return glob.has_magic(pattern)


def discover(sources: Iterable[FileSource]) -> dict[str, str]:
    """{path: source name} for every regular file matching a configured path or glob."""
    found: dict[str, str] = {}
    for src in sources:
        paths = sorted(glob.glob(src.pattern)) if has_magic(src.pattern) else [src.pattern]
        for path in paths:
            if path in found or not os.path.isfile(path):
                continue
            found[path] = src.name or path
    return found


def watch_dirs(sources: Iterable[FileSource]) -> set[str]:
    """Folders to watch for events: a pattern's folder, or its deepest fixed folder."""
    dirs = set()
    for src in sources:
        d = os.path.dirname(src.pattern)
        while has_magic(d):
            d = os.path.dirname(d)
        dirs.add(d or ".")
    return dirs
