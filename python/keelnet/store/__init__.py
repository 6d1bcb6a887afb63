"""Persistent desired state: a host's own (SQLite) and, for global scope, a cluster's (etcd)."""

from keelnet.store.base import NetworkStore
from keelnet.store.sqlite import PortTaken, Store, default_state_dir

__all__ = ["NetworkStore", "PortTaken", "Store", "default_state_dir"]
