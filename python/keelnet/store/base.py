"""The store interface: what Host and drivers read of networks and endpoints, per scope.

Two implementations: :class:`~keelnet.store.sqlite.Store` keeps a host's local-scope
networks (bridge, macvlan, ipvlan, host, none) with its sandboxes and published ports,
in SQLite; :class:`~keelnet.store.etcd.EtcdStore` keeps global-scope networks (overlay)
shared by the hosts of a cluster, in etcd. Reads are the same for both. Writes differ in
one way that matters: SQLite holds one transaction across an operation's kernel
changes, while etcd writes are compare-and-swap transactions of their own, so the
etcd store's writes are whole operations (`reserve_endpoint`, `release_endpoint`, ...)
that retry on a conflict and never leave a half-made record.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from keelnet.ipam import AddressPool
from keelnet.model import Endpoint, Network, Peer


class NetworkStore(Protocol):
    """Networks, their address pools and this host's endpoints, of one scope."""

    #: "local" (this host only) or "global" (every host of the cluster store).
    scope: str

    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction around an operation (nested use joins the outer one)."""
        ...

    def find_network(self, name_or_id: str) -> Network | None: ...

    def networks(self) -> list[Network]: ...

    def address_pool(self, network_id: str, version: int) -> AddressPool | None: ...

    def endpoints(
        self, *, network_id: str | None = None, sandbox: str | None = None
    ) -> list[Endpoint]:
        """This host's endpoints, filtered by what is given."""
        ...

    def addresses(self, network_id: str) -> list[str]:
        """Every address handed out on the network, by any host."""
        ...

    def peers(self, network_id: str) -> list[Peer] | None:
        """The hosts taking part in a global network; None for a local one."""
        ...

    def close(self) -> None: ...
