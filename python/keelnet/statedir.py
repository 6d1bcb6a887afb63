"""Where a host's state lives. Its own module, free of pathlib, so that the CLI finds the
agent's socket without loading the store: every command pays for what it imports."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: the CLI does not import typing
if TYPE_CHECKING:
    from pathlib import Path


def state_dir_path(netns: str | None, state_dir: str | os.PathLike[str] | None = None) -> str:
    """`state_dir` if given, else `$KEELNET_STATE_DIR`, else /var/lib/keelnet/<host netns
    name or "default">."""
    if state_dir:
        return os.fspath(state_dir)
    configured = os.environ.get("KEELNET_STATE_DIR")
    if configured:
        return configured
    host = os.path.basename(netns) if netns else "default"
    return os.path.join("/var/lib/keelnet", host)


def default_state_dir(netns: str | None) -> Path:
    """The state directory of a host when none is given (see `state_dir_path`)."""
    from pathlib import Path

    return Path(state_dir_path(netns))
