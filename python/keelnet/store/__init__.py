"""Persistent desired state of a host (SQLite in its state directory)."""

from keelnet.store.sqlite import PortTaken, Store, default_state_dir

__all__ = ["PortTaken", "Store", "default_state_dir"]
