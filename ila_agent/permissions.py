"""Start-up checks on file modes: a buffer or config anyone can write is refused."""

from __future__ import annotations

import os
import stat
import sys

from ila_agent.config import AgentConfig
from ila_core.errors import UsageError


class UnsafePermissions(UsageError):
    """A file the agent trusts can be changed by any user (exit 2: restarting won't help)."""


def _world_writable(path: str) -> bool:
    st = os.stat(path)
    if not st.st_mode & stat.S_IWOTH:
        return False
    # A shared folder with the sticky bit (/tmp) does not let others replace our files.
    return not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX)


def check_permissions(cfg: AgentConfig) -> list[str]:
    """Raise UnsafePermissions for world-writable config/buffer (or their folders);
    return warnings (a config holding the key that any user can read)."""
    if sys.platform.startswith("win"):
        return []
    targets = [("configuration", cfg.config_path), ("buffer", cfg.buffer_db)]
    for what, path in targets:
        folder = os.path.dirname(os.path.abspath(path))
        for p, name in ((path, f"the {what}"), (folder, f"the folder of the {what}")):
            if os.path.exists(p) and _world_writable(p):
                raise UnsafePermissions(
                    f"refusing to start: {name} {p} can be written by any user "
                    f"(mode {oct(stat.S_IMODE(os.stat(p).st_mode))}); fix it with: chmod o-w {p}"
                )
    warnings = []
    if cfg.api_key_origin == "config api_key":
        mode = stat.S_IMODE(os.stat(cfg.config_path).st_mode)
        if mode & stat.S_IROTH:
            warnings.append(
                f"the configuration {cfg.config_path} holds the API key and any user can read "
                f"it (mode {oct(mode)}); consider: chmod o-r {cfg.config_path}"
            )
    return warnings
