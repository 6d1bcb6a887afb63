"""Persistent desired state: a host's own (SQLite) and, for global scope, a cluster's (etcd)."""

from keelnet.statedir import default_state_dir
from keelnet.store.base import NetworkStore
from keelnet.store.sqlite import PortTaken, Store

__all__ = ["NetworkStore", "PortTaken", "Store", "default_state_dir"]
