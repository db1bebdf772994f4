"""What enters the buffer: include/exclude filters per source and redaction for all.

Patterns come from the configuration, so a pattern that can take exponential time on some
line (a catastrophic one, ``(a+)+$``) would freeze collection. Python's ``re`` has no time
limit, so patterns are checked when the configuration is loaded instead: a repetition that
contains another unbounded repetition (``(a+)+``, ``(\\w*\\s?)*``) is refused with a message
saying why and how to write it. Lines are at most ``max_line_bytes`` long, which bounds the
rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ila_core.settings import SettingsReader, kind

try:  # Python 3.11+: the parser moved and is private either way; fall back for 3.10
    from re import _constants as sre_constants  # type: ignore[attr-defined]
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

FILTER_KEYS = ("include", "exclude")  # accepted on every source
UNBOUNDED = 64  # a repetition allowing more than this many is treated as unbounded
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT)


def _nested_repeat(items: Any, inside: bool = False) -> bool:
    """True when an unbounded repetition holds another unbounded repetition."""
    for op, arg in items:
        if op in _REPEATS:
            _low, high, body = arg
            unbounded = high is sre_constants.MAXREPEAT or high > UNBOUNDED
            if unbounded and inside:
                return True
            if _nested_repeat(body, inside or unbounded):
                return True
        elif op is sre_constants.SUBPATTERN:
            if _nested_repeat(arg[-1], inside):
                return True
        elif op is sre_constants.BRANCH:
            if any(_nested_repeat(b, inside) for b in arg[1]):
                return True
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT) and _nested_repeat(
            arg[1], inside
        ):
            return True
    return False


def compile_pattern(r: SettingsReader, key: str, text: Any) -> re.Pattern[str]:
    """A pattern from the config, or a ConfigError naming the key and what is wrong."""
    if not isinstance(text, str) or not text:
        raise r.error(key, f"must be a non-empty regular expression, got {kind(text)}")
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise r.error(key, f"is not a valid regular expression: {exc}") from None
    if _nested_repeat(sre_parse.parse(text)):
        raise r.error(
            key,
            "has a repetition inside a repetition (like (a+)+): it can take exponential "
            "time on some lines and freeze collection; write it without the nesting "
            "(e.g. a+ instead of (a+)+, or a bounded count like {1,10})",
        )
    return compiled


@dataclass(frozen=True)
class Filters:
    """``include``: only entries matching one are kept; then ``exclude`` drops matches."""

    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)

    def keep(self, text: str) -> bool:
        if self.include and not any(p.search(text) for p in self.include):
            return False
        return not any(p.search(text) for p in self.exclude)

    def to_json(self) -> dict[str, Any]:
        return {"include": [p.pattern for p in self.include],
                "exclude": [p.pattern for p in self.exclude]}  # fmt: skip

    @classmethod
    def from_json(cls, r: SettingsReader, key: str, item: dict[str, Any]) -> Filters:
        def patterns(name: str) -> tuple[re.Pattern[str], ...]:
            raw = item.get(name)
            if raw is None:
                return ()
            if not isinstance(raw, list):
                raise r.error(
                    f"{key}.{name}", f"must be a list of regular expressions, got {kind(raw)}"
                )
            return tuple(compile_pattern(r, f"{key}.{name}[{i}]", p) for i, p in enumerate(raw))

        return cls(include=patterns("include"), exclude=patterns("exclude"))


@dataclass(frozen=True)
class Redaction:
    """A secret's pattern and what replaces it."""

    pattern: re.Pattern[str]
    replacement: str = "[REDACTED]"


@dataclass(frozen=True)
class Redactor:
    """Applied to every entry before it is committed: the secret never reaches the buffer
    file, its WAL, a bundle or the wire. A redacted entry carries no raw bytes (raw_b64)."""

    rules: tuple[Redaction, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    def text(self, text: str) -> str:
        for rule in self.rules:
            text = rule.pattern.sub(rule.replacement, text)
        return text

    def entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A protocol entry with its ``log_text`` redacted (and no raw_b64 when it was)."""
        text = entry.get("log_text")
        if not self.rules or not isinstance(text, str):
            return entry
        clean = self.text(text)
        if clean == text and "raw_b64" not in entry:
            return entry
        out = dict(entry, log_text=clean)
        out.pop("raw_b64", None)  # the raw bytes would carry what was just removed
        return out

    def to_json(self) -> list[dict[str, str]]:
        return [{"pattern": r.pattern.pattern, "replacement": r.replacement} for r in self.rules]

    @classmethod
    def from_json(cls, r: SettingsReader) -> Redactor:
        raw = r.raw.get("redact")
        if raw is None:
            return cls()
        if not isinstance(raw, list):
            raise r.error("redact", f"must be a list of {{pattern, replacement}}, got {kind(raw)}")
        rules = []
        for i, item in enumerate(raw):
            key = f"redact[{i}]"
            if not isinstance(item, dict):
                raise r.error(key, f"must be an object with a pattern, got {kind(item)}")
            r.nested(key, item).warn_unknown({"pattern", "replacement"})
            replacement = item.get("replacement", "[REDACTED]")
            if not isinstance(replacement, str):
                raise r.error(f"{key}.replacement", f"must be a string, got {kind(replacement)}")
            rules.append(Redaction(compile_pattern(r, f"{key}.pattern", item.get("pattern")),
                                   replacement))  # fmt: skip
        return cls(tuple(rules))


@dataclass(frozen=True)
class Processing:
    """Everything applied to one source's entries on their way into the buffer."""

    filters: Filters = Filters()
    redactor: Redactor = Redactor()

    def records(self, entries: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Record entries kept (redacted) and how many were filtered out."""
        if not self.filters and not self.redactor:
            return list(entries), 0
        kept = [
            self.redactor.entry(e) for e in entries if self.filters.keep(str(e.get("log_text", "")))
        ]
        return kept, len(entries) - len(kept)
