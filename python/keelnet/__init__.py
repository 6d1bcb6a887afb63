"""keelnet: Docker-style container networking with a Rust data plane."""

from __future__ import annotations

from keelnet._core import __version__
from keelnet.errors import KeelnetError
from keelnet.host import Host

__all__ = ["Host", "KeelnetError", "__version__"]
