"""keelnet's embedded DNS server: Docker's `127.0.0.11` inside every sandbox.

On user-defined bridge, macvlan and ipvlan networks (every driver but ``host`` and
``none``: ``Network.embedded_dns``), a sandbox finds the others by name: its own name and its
aliases per network (``Host.connect(..., aliases=[...])``) answer on every network it
shares with the asker, ``name.network`` asks one network, an alias several sandboxes
share answers with all of them in rotating order, and reverse lookups answer
``name.network``. Unknown single-label names and unknown ``x.<network>`` names get
NXDOMAIN; everything else goes to the host's upstream servers.

The resolver is one Rust thread (:class:`Resolver`) in the process that owns the
:class:`~keelnet.host.Host` (a library user's program, or ``keelnet agent`` for CLI
users); it serves every sandbox's UDP and TCP sockets and reads names from a table this
module keeps up to date on every connect, disconnect and alias (never from the store per
query). It starts when the first endpoint of a network with DNS appears and stops with
the last sandbox it serves, or with the Host. ``Host(serve_dns=False)`` (the CLI's own
short-lived processes) runs none and only keeps the sandboxes' files.

On an overlay network the names of the other hosts' sandboxes answer too: their endpoint
records in the cluster store carry their sandbox name and aliases, and the host's cluster
watch (:mod:`keelnet.cluster`) hands each ready endpoint of a live host to
:meth:`HostDns.add_peer` as it appears, and to :meth:`HostDns.remove_peer` as it goes:
disconnected there, or its host's lease ran out. As local names, they are seen only by
sandboxes on that network.

Upstream servers are those of the host's ``resolv.conf``: ``/etc/netns/<host netns>/
resolv.conf`` for ``Host(netns=...)`` when it exists (the file ``ip netns exec`` shows
programs there), else ``/etc/resolv.conf``. As in Docker (moby ``TransformForIntNS``),
they are reached from the host's namespace, so a loopback server such as systemd's
``127.0.0.53`` works, and only for sandboxes with external access (a sandbox only on
``internal`` networks gets SERVFAIL for outside names). :meth:`Resolver.set_upstreams`
also takes servers reached from each sandbox's own namespace (Docker's ``--dns``).

Each sandbox gets ``/etc/netns/<sandbox>/resolv.conf`` (``nameserver 127.0.0.11``, the
host's ``search`` and ``options``, ``ndots:0`` as Docker adds): ``ip netns exec`` and
``keelnet sandbox exec`` mount it on ``/etc/resolv.conf``. For an adopted sandbox (a
container's namespace), mount :func:`resolv_conf_path` at ``/etc/resolv.conf`` in the
container yourself.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from keelnet import _core
from keelnet.checks import DNS_NAME
from keelnet.errors import DataplaneError, KeelnetError
from keelnet.model import Endpoint, Network, RemoteEndpoint
from keelnet.store import Store

if TYPE_CHECKING:
    from keelnet.cluster import ClusterMember
    from keelnet.global_scope import GlobalScope

__all__ = [
    "LISTEN_ADDRESS",
    "ResolvConf",
    "Resolver",
    "host_resolv_conf",
    "read_resolv_conf",
    "resolv_conf_path",
]

#: Where the resolver answers inside each sandbox (Docker's address).
LISTEN_ADDRESS = "127.0.0.11"
#: Per-namespace files `ip netns exec NAME` mounts over /etc.
NETNS_ETC = Path("/etc/netns")
_HEADER = "# Written by keelnet: the embedded DNS server of the sandbox's networks.\n"


@dataclass(frozen=True)
class ResolvConf:
    """What keelnet uses of a ``resolv.conf``."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


def read_resolv_conf(path: str | os.PathLike[str]) -> ResolvConf:
    """Parse a ``resolv.conf``; a missing file is an empty one (as for the C library)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ResolvConf()
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    options: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        keyword, values = words[0], words[1:]
        if keyword == "nameserver" and values:
            nameservers.append(values[0])
        elif keyword in ("search", "domain"):
            search = tuple(values)  # the last of them wins
        elif keyword == "options":
            options.extend(values)
    return ResolvConf(tuple(nameservers), search, tuple(options))


def host_resolv_conf(netns: str | None) -> Path:
    """The ``resolv.conf`` programs in the host namespace see."""
    if netns:
        own = NETNS_ETC / netns / "resolv.conf"
        if own.exists():
            return own
    return Path("/etc/resolv.conf")


def resolv_conf_path(sandbox: str) -> Path:
    """Where keelnet writes a sandbox's ``resolv.conf``."""
    return NETNS_ETC / sandbox / "resolv.conf"


def sandbox_resolv_conf(host: ResolvConf) -> str:
    """A sandbox's ``resolv.conf``: the embedded server, the host's search and options."""
    lines = [_HEADER, f"nameserver {LISTEN_ADDRESS}\n"]
    if host.search:
        lines.append(f"search {' '.join(host.search)}\n")
    options = list(host.options)
    if not any(option.startswith("ndots:") for option in options):
        options.append("ndots:0")  # Docker's: ask the name as given first
    lines.append(f"options {' '.join(options)}\n")
    return "".join(lines)


def upstreams(host: ResolvConf) -> list[tuple[str, int, bool]]:
    """The host's servers as the resolver takes them: reached from the host namespace.
    The resolver's own address and scoped IPv6 addresses (``fe80::1%eth0``) are left out."""
    servers = []
    for text in host.nameservers:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if str(address) != LISTEN_ADDRESS:
            servers.append((str(address), 53, True))
    return servers


class Resolver:
    """The resolver thread and its name table (see the module documentation).

    Names are kept per network id, so any source can push them: the Host does for its
    endpoints, an overlay watcher can for other hosts' endpoints of a shared network.
    """

    def __init__(self, netns: str | None = None, *, upstream_timeout: float | None = None):
        self._core = _core.Resolver(netns, upstream_timeout=upstream_timeout)

    def set_network(self, network_id: str, name: str) -> None:
        """Add a network's table, or rename it (`sandbox.<name>` asks that network)."""
        self._core.set_network(network_id, name)

    def remove_network(self, network_id: str) -> None:
        self._core.remove_network(network_id)

    def set_endpoint(
        self,
        network_id: str,
        endpoint_id: str,
        names: Iterable[str],
        ipv4: str | None = None,
        ipv6: str | None = None,
    ) -> None:
        """Add or replace an endpoint under `names` (the first answers reverse lookups)."""
        self._core.set_endpoint(network_id, endpoint_id, list(names), ipv4, ipv6)

    def remove_endpoint(self, network_id: str, endpoint_id: str) -> None:
        self._core.remove_endpoint(network_id, endpoint_id)

    def attach(
        self, sandbox: str, netns: str, networks: Iterable[str], *, host_forwarding: bool = True
    ) -> None:
        """Serve `sandbox` (its namespace path or name) the names of `networks`, asked in
        that order; opens 127.0.0.11:53 there on the first call."""
        self._core.attach(sandbox, netns, list(networks), host_forwarding)

    def detach(self, sandbox: str) -> None:
        self._core.detach(sandbox)

    def set_upstreams(self, servers: Iterable[tuple[str, int, bool]]) -> None:
        """`(address, port, from_host)` per server, tried in order."""
        self._core.set_upstreams(list(servers))

    def sandboxes(self) -> list[str]:
        return self._core.sandboxes()

    def stats(self) -> dict[str, int]:
        """Counters: answered, forwarded, ignored, failed; and names held."""
        return self._core.stats()

    @property
    def running(self) -> bool:
        return self._core.running

    def close(self) -> None:
        self._core.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HostDns:
    """A Host's DNS: keeps the resolver's table and the sandboxes' files in step with the
    host's store and, with `use_cluster`, its endpoints on global networks. Started
    lazily: a Host without DNS networks runs no resolver thread."""

    def __init__(
        self, store: Store, netns: str | None, netns_path: str | None, *, serve: bool = True
    ):
        self._store = store
        self._global: GlobalScope | None = None
        self._cluster: ClusterMember | None = None
        self._netns = netns
        self._netns_path = netns_path
        self._serve = serve
        self._resolver: Resolver | None = None
        self._own_lock = threading.RLock()

    def use_cluster(self, scope: GlobalScope) -> None:
        """Serve global networks too: this host's endpoints as `scope` knows them (a
        member without asking etcd, so local changes never wait for it), the other
        hosts' as its cluster watch reports them."""
        self._global, self._cluster = scope, scope.cluster

    @property
    def _lock(self) -> threading.RLock:
        """Held while the resolver starts, stops or takes another host's names: the
        cluster's lock when there is one, so no peer event falls between the replay of
        the known peers and the start."""
        return self._cluster.lock if self._cluster is not None else self._own_lock

    @staticmethod
    def serves(network: Network) -> bool:
        return network.embedded_dns

    def _joined(self, sandbox: str | None = None) -> list[tuple[Network, Endpoint]]:
        """This host's endpoints (of `sandbox`) on networks with DNS, with their networks:
        on local networks, then on global ones, each in the order they joined."""
        networks = {n.id: n for n in self._store.networks()}
        found = [
            (networks[e.network_id], e)
            for e in self._store.endpoints(sandbox=sandbox)
            if e.network_id in networks
        ]
        if self._global is not None:
            found += self._global.joined(sandbox)
        return [(network, endpoint) for network, endpoint in found if self.serves(network)]

    def _started(self) -> Resolver:
        """The resolver, started (with every endpoint of a DNS network this host and its
        cluster know in its table) if it is not running."""
        with self._lock:
            if self._resolver is None:
                self._resolver = Resolver(self._netns_path)
                for network, endpoint in self._joined():
                    self._push(network, endpoint)
                if self._cluster is not None:
                    for network, peer in self._cluster.programmed():
                        if self.serves(network):
                            self._push_names(network, peer.id, peer.names, peer.ip)
            return self._resolver

    def endpoint_added(self, network: Network, endpoint: Endpoint) -> None:
        if not self.serves(network):
            return
        if not self._serve:
            self._write_or_remove(endpoint.sandbox)
            return
        self._push(network, endpoint)
        self._attach(endpoint.sandbox)

    def _push(self, network: Network, endpoint: Endpoint) -> None:
        self._push_names(network, endpoint.id, endpoint.names, endpoint.ip, endpoint.ipv6)

    def _push_names(
        self,
        network: Network,
        endpoint_id: str,
        names: Iterable[str],
        ip: str | None,
        ipv6: str | None = None,
    ) -> None:
        """Put an endpoint in the table under its sandbox name and aliases; a name that
        is no DNS name (a 64-letter sandbox name, a bad record of another host) is left
        out, so the sandbox still resolves others."""
        resolver = self._started()
        resolver.set_network(network.id, network.name)
        valid = [name for name in names if DNS_NAME.fullmatch(name)]
        if valid:
            resolver.set_endpoint(network.id, endpoint_id, valid, ip, ipv6)

    def add_peer(self, network: Network, peer: RemoteEndpoint) -> None:
        """Another host's endpoint (the cluster watch): its names, while this host serves
        any sandbox (the resolver takes the known ones when it starts)."""
        with self._lock:
            if self._resolver is not None and self.serves(network):
                self._push_names(network, peer.id, peer.names, peer.ip)

    def remove_peer(self, network: Network, peer: RemoteEndpoint) -> None:
        with self._lock:
            if self._resolver is not None:
                self._resolver.remove_endpoint(network.id, peer.id)

    def endpoint_removed(self, network: Network, endpoint: Endpoint) -> None:
        if not self.serves(network):
            return
        if self._resolver is None:
            self._write_or_remove(endpoint.sandbox, leaving=endpoint.id)
            return
        self._resolver.remove_endpoint(network.id, endpoint.id)
        self._attach(endpoint.sandbox, leaving=endpoint.id)

    def network_removed(self, network: Network) -> None:
        if self._resolver is not None:
            self._resolver.remove_network(network.id)

    def sandbox_removed(self, sandbox: str) -> None:
        self._detach(sandbox)

    def _detach(self, sandbox: str) -> None:
        """Stop serving the sandbox; the resolver stops with the last one (its names are
        in the store, and come back with the next start)."""
        if self._resolver is not None:
            self._resolver.detach(sandbox)
            if not self._resolver.sandboxes():
                self.close()
        _remove_file(sandbox)

    def _dns_networks(self, sandbox: str, leaving: str | None) -> list[Network]:
        """The sandbox's networks with DNS (less `leaving`, an endpoint
        going away in this transaction): its local ones, then its global ones, each in
        the order it joined them."""
        return [network for network, endpoint in self._joined(sandbox) if endpoint.id != leaving]

    def _write_or_remove(self, sandbox: str, leaving: str | None = None) -> None:
        """Without a server here: the sandbox's resolv.conf, or none when it has no
        network with DNS left."""
        if self._dns_networks(sandbox, leaving):
            host = read_resolv_conf(host_resolv_conf(self._netns))
            _write_file(sandbox, sandbox_resolv_conf(host))
        else:
            _remove_file(sandbox)

    def _attach(self, sandbox: str, leaving: str | None = None) -> None:
        """Serve the sandbox its DNS networks (less `leaving`); none left: stop serving it."""
        mine = self._dns_networks(sandbox, leaving)
        box = self._store.find_sandbox(sandbox)
        if not mine or box is None:
            self._detach(sandbox)
            return
        resolver = self._started()
        host = read_resolv_conf(host_resolv_conf(self._netns))
        resolver.set_upstreams(upstreams(host))
        external = any(not n.internal for n in mine)
        try:
            resolver.attach(sandbox, box.path, [n.id for n in mine], host_forwarding=external)
        except DataplaneError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise DataplaneError(
                errno.EADDRINUSE,
                f"{LISTEN_ADDRESS}:53 in sandbox {sandbox} is taken, most likely by the DNS "
                "server of another process holding this host (a `keelnet agent`?): make "
                "changes through that process, or stop it first",
            ) from None
        _write_file(sandbox, sandbox_resolv_conf(host))

    def rebuild(self) -> None:
        """Serve what the store holds (a Host starting on existing state). A sandbox
        another process already serves is left to it, with a warning."""
        if not self._serve:
            return
        # Endpoints a Docker plugin caller has not joined yet have no sandbox; those it
        # joined (handed over) are in its containers, which Docker's own DNS serves.
        sandboxes = list(
            dict.fromkeys(e.sandbox for _, e in self._joined() if e.sandbox and not e.handed_over)
        )
        if not sandboxes:
            return
        self._started()
        for sandbox in sandboxes:
            try:
                self._attach(sandbox)
            except KeelnetError as exc:
                warnings.warn(f"DNS for sandbox {sandbox} not served: {exc}", stacklevel=2)

    @property
    def resolver(self) -> Resolver | None:
        """The running resolver, if any endpoint needed one yet."""
        return self._resolver

    def close(self) -> None:
        with self._lock:
            if self._resolver is not None:
                self._resolver.close()
                self._resolver = None


def _write_file(sandbox: str, text: str) -> None:
    path = resolv_conf_path(sandbox)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    temporary.chmod(0o644)
    os.replace(temporary, path)  # readers see the old file or the new one, never half


def _remove_file(sandbox: str) -> None:
    path = resolv_conf_path(sandbox)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (the user's own files) or gone
        path.parent.rmdir()
