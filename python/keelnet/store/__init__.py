"""Persistent desired state of a host (SQLite in its state directory)."""

from keelnet.statedir import default_state_dir
from keelnet.store.sqlite import PortTaken, Store

__all__ = ["PortTaken", "Store", "default_state_dir"]
