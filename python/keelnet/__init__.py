"""keelnet: Docker-style container networking with a Rust data plane."""

from __future__ import annotations

from keelnet.errors import KeelnetError

TYPE_CHECKING = False  # not typing's: the CLI does not import typing
if TYPE_CHECKING:
    from typing import Any

    from keelnet._core import __version__
    from keelnet.host import Host

__all__ = ["Host", "KeelnetError", "__version__"]


def __getattr__(name: str) -> Any:
    # Host pulls in pyroute2 and the drivers (~0.1 s), __version__ the Rust extension:
    # loaded on first use, so that commands the agent answers start at once.
    if name == "Host":
        from keelnet.host import Host

        return Host
    if name == "__version__":
        from keelnet._core import __version__

        return __version__
    raise AttributeError(f"module 'keelnet' has no attribute {name!r}")
