"""What a reload (SIGHUP) may change while the agent runs, and what needs a restart."""

from __future__ import annotations

from typing import Any

from ila_agent.config import AgentConfig

# Changed in place: what is read, how it is processed, what is redacted.
RELOADABLE = frozenset({"sources", "ignored_sources", "redact", "unknown_keys"})


def changed_keys(old: AgentConfig, new: AgentConfig) -> set[str]:
    """The configuration keys whose effective values differ (the key itself never shown)."""
    before, after = _comparable(old), _comparable(new)
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _comparable(cfg: AgentConfig) -> dict[str, Any]:
    out = cfg.redacted()
    out["api_key"] = hash(cfg.api_key)  # compared, never printed
    out.pop("api_key_from", None)
    out.pop("mode", None)
    return out
