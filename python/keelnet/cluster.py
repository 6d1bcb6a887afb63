"""This host as a member of a cluster store: its lease, its watch, its peers.

The process that owns a :class:`~keelnet.host.Host` with an etcd store (a library
user's program or `keelnet agent`) is the host's member: it holds a lease (TTL a few
seconds, kept alive every third of it) with the host's record `hosts/<name>` under it,
so a host that dies leaves the cluster when its lease runs out. One thread lists the
store once, remembers the revision, and then only watches from there; when the watch
ends (its etcd member went away) it resumes from the last revision it saw, and lists
again only when that revision was compacted. Nothing re-reads the store on a timer.

From what it knows it keeps, per global network, the remote endpoints that are ready
and whose host is alive, and programs them into the data plane (through
`PeerProgrammer`) as they change: each event re-checks only the endpoints it concerns
(one record; a host's endpoints when it joins or leaves; a network's when it comes or
goes), so an event costs the same with ten endpoints or ten thousand. While etcd is
unreachable the data plane keeps its last state: existing flows keep forwarding.

A network that goes from the store (its delete event, or missing from a list after a
reconnect) is handed to `on_network_gone`, outside the lock, once this host's view of
the store has caught up: a host cut off for longer than its lease finds, when it comes
back, the networks removed meanwhile (its endpoints on them released as stale), and
takes down what it still holds of them. A hand-over that fails because etcd went away
again is retried; one that fails otherwise is logged and dropped (the next start's
reconcile removes what is left).

A remote record never takes an IP or MAC that one of this host's endpoints holds (an
address clash, or a record written by someone with access to the store): it is not
programmed, with a logged warning, and one programmed before the local endpoint took the
address goes when it does (`hold`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from keelnet.errors import KeelnetError, StoreUnavailable
from keelnet.model import Endpoint, Network, RemoteEndpoint
from keelnet.store.etcd import (
    ENDPOINTS,
    HOSTS,
    NETWORKS,
    PREFIX,
    EtcdStore,
    endpoint_from_record,
    network_from_json,
    remote_endpoint,
)
from keelnet.store.etcd_client import Watch, WatchEnded, WatchEvent

log = logging.getLogger(__name__)
DEFAULT_LEASE_TTL = 3
T = TypeVar("T")


class PeerProgrammer(Protocol):
    def add_peer(self, network: Network, peer: RemoteEndpoint) -> None: ...
    def remove_peer(self, network: Network, peer: RemoteEndpoint) -> None: ...


class ClusterMember:
    """Membership (lease) and the peer watch of one host; `start()`, then `close()`.
    `on_network_gone` is called, on the watch's thread and outside `lock`, with each
    network removed from the store while this host was a member (those removed before
    it is set wait for it)."""

    def __init__(
        self,
        store: EtcdStore,
        vtep: str,
        programmer: PeerProgrammer,
        *,
        lease_ttl: int = DEFAULT_LEASE_TTL,
    ) -> None:
        self.store = store
        self.vtep = vtep
        self.programmer = programmer
        self.lease_ttl = lease_ttl
        self.on_network_gone: Callable[[Network], None] | None = None
        #: Held while peers are programmed; drivers hold it while they replay peers.
        self.lock = threading.RLock()
        self.lease = 0
        self.revision = 0  # the last store revision seen (list or watch)
        self.relists = 0  # full lists so far (the first one included)
        self.last_error: str | None = None
        self._cache: dict[str, bytes] = {}  # the watched records as the store holds them
        # ...and read: endpoint key -> (peer, ready) (None: no IPv4 address, or unreadable),
        # network id -> network, the live hosts.
        self._peers: dict[str, tuple[RemoteEndpoint, bool] | None] = {}
        self._networks: dict[str, Network] = {}
        self._live: set[str] = set()
        self._applied: dict[str, tuple[Network, RemoteEndpoint]] = {}  # by endpoint key
        self._gone: dict[str, Network] = {}  # removed networks not yet handed over, by id
        #: Names of the networks handed to `on_network_gone` so far (what the host saw go).
        self.networks_gone: list[str] = []
        # This host's endpoints (id -> endpoint): their records, and those its process
        # holds before the watch sees their records. No peer takes their IP or MAC.
        self._local: dict[str, Endpoint] = {}
        self._claims: dict[tuple[str, str], str] | None = None  # (network, IP or MAC) -> id
        self._refused: set[str] = set()  # endpoint keys refused for that (warned once)
        self._watch: Watch | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_keepalive = 0.0

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Join (lease and host record) and program the peers known now; raises
        StoreUnavailable when etcd cannot be reached."""
        self._keep_lease()
        self._relist()
        self._thread = threading.Thread(target=self._run, name="keelnet-cluster", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching and leave: the host record goes at once (not after the TTL)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._cancel_watch()
        if self.lease:
            with contextlib.suppress(KeelnetError):
                self.store.client.revoke(self.lease)
            self.lease = 0

    # --- what the drivers ask ------------------------------------------------------------

    def peers(self, network_id: str) -> list[RemoteEndpoint]:
        """The remote endpoints of `network_id` programmed now (a driver replays them
        when it builds the network's plumbing on this host)."""
        with self.lock:
            return [peer for _, peer in self._applied.values() if peer.network_id == network_id]

    def programmed(self) -> list[tuple[Network, RemoteEndpoint]]:
        """Every remote endpoint programmed now, with its network."""
        with self.lock:
            return list(self._applied.values())

    def own_endpoints(self) -> list[tuple[Network, Endpoint]]:
        """This host's ready endpoints as the store held them at the last list or event,
        with their networks (what the host knows of its own without asking etcd)."""
        found = []
        with self.lock:
            for key, value in self._cache.items():
                if not key.startswith(ENDPOINTS):
                    continue
                with contextlib.suppress(KeelnetError):
                    endpoint, host, _vtep, ready = endpoint_from_record(value)
                    network = self._networks.get(endpoint.network_id)
                    if ready and host == self.store.host and network is not None:
                        found.append((network, endpoint))
        return sorted(found, key=lambda pair: pair[1].sandbox)

    def hold(self, endpoint: Endpoint) -> None:
        """One of this host's endpoints holds its IP and MAC from now on: a peer claiming
        either is not programmed, and one programmed already goes (before the endpoint's
        interface is made)."""
        with self.lock:
            self._local[endpoint.id] = endpoint
            self._claims = None
            self._recheck(endpoint.network_id)

    def let_go(self, endpoint_id: str) -> None:
        """This host's endpoint is gone: a peer may take its addresses."""
        with self.lock:
            gone = self._local.pop(endpoint_id, None)
            if gone is not None:
                self._claims = None
                self._recheck(gone.network_id)

    def _recheck(self, network_id: str) -> None:
        self._update(
            key
            for key, found in self._peers.items()
            if found is not None and found[0].network_id == network_id
        )

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_keepalive:
                    self._keep_lease()
                if self._watch is None:
                    self._resume()
                self._hand_over_gone()  # also those a list found gone, or a failed try
                assert self._watch is not None
                wait = max(0.0, self._next_keepalive - time.monotonic())
                try:
                    batch = [self._watch.events.get(timeout=min(wait, 0.5))]
                except queue.Empty:
                    continue
                with contextlib.suppress(queue.Empty):
                    while len(batch) < 1000:
                        batch.append(self._watch.events.get_nowait())
                self._apply(batch)
                self._hand_over_gone()
                backoff = 0.1
            except StoreUnavailable as exc:
                # Keep the data plane as it is; try again, a little later each time.
                self.last_error = str(exc)
                self._cancel_watch()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            except Exception as exc:  # the watch must outlive a bad record or a kernel error
                log.exception("keelnet cluster watch")
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(backoff)

    def _keep_lease(self) -> None:
        client = self.store.client
        if self.lease and client.keepalive(self.lease) > 0:
            self._next_keepalive = time.monotonic() + self.lease_ttl / 3
            return
        # No lease yet, or it ran out while etcd was away: join again.
        self.lease = client.grant(self.lease_ttl)
        client.put(HOSTS + self.store.host, self.store.host_record(self.vtep), self.lease)
        self._next_keepalive = time.monotonic() + self.lease_ttl / 3

    def _relist(self) -> None:
        found, revision = self.store.client.range(PREFIX, prefix=True)
        with self.lock:
            known = dict(self._networks)
            self._cache.clear()
            self._peers.clear()
            self._networks.clear()
            self._live.clear()
            for kv in found:
                if _watched(kv.key):
                    self._take(kv.key, kv.value)
            self.revision = revision
            self.relists += 1
            for network_id in known.keys() - self._networks.keys():  # removed while unwatched
                self._gone[network_id] = known[network_id]
            self._update([*self._applied, *self._peers])  # what went while unwatched too

    def _resume(self) -> None:
        """Watch from the revision after the last one seen; list first if it is gone."""
        if self.store.client.compacted_since(self.revision):
            self._relist()
        self._watch = self.store.client.watch(PREFIX, self.revision + 1)

    def _cancel_watch(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(Exception):
                self._watch.cancel()
            self._watch = None

    def _apply(self, batch: list[WatchEvent | WatchEnded]) -> None:
        with self.lock:
            # What the batch changed: endpoint records, hosts, networks.
            keys: list[str] = []
            hosts: set[str] = set()
            networks: set[str] = set()
            for item in batch:
                if isinstance(item, WatchEnded):
                    self._cancel_watch()
                    if item.compacted:
                        self._relist()
                    break
                self.revision = max(self.revision, item.revision)
                if not _watched(item.key):
                    continue
                self._take(item.key, item.value if item.kind == "put" else None)
                if item.key.startswith(ENDPOINTS):
                    keys.append(item.key)
                elif item.key.startswith(HOSTS):
                    hosts.add(item.key[len(HOSTS) :])
                else:
                    networks.add(item.key[len(NETWORKS) :])
            if hosts or networks:  # a host joined or left, a network came or went
                keys += [
                    key
                    for key, found in self._peers.items()
                    if found and (found[0].host in hosts or found[0].network_id in networks)
                ]
            self._update(keys)

    def _take(self, key: str, value: bytes | None) -> None:
        """Note one watched record put (`value`) or deleted (None), read once here."""
        if value is None:
            self._cache.pop(key, None)
        else:
            self._cache[key] = value
        if key.startswith(ENDPOINTS):
            if value is None:
                self._peers.pop(key, None)
                self._take_local(key, None)
            else:
                self._peers[key] = self._read(remote_endpoint, value)
                self._take_local(key, value)
        elif key.startswith(HOSTS):
            if value is None:
                self._live.discard(key[len(HOSTS) :])
            else:
                self._live.add(key[len(HOSTS) :])
        else:
            network = self._read(network_from_json, value) if value is not None else None
            if network is None:
                gone = self._networks.pop(key[len(NETWORKS) :], None)
                if gone is not None and value is None:  # deleted: its local part goes
                    self._gone[gone.id] = gone
            else:
                self._networks[key[len(NETWORKS) :]] = network

    def _hand_over_gone(self) -> None:
        """Hand each removed network to `on_network_gone` (outside the lock: the handler
        takes its Host's, which the Host holds while it takes this one). StoreUnavailable
        keeps it for the next try."""
        with self.lock:
            pending = list(self._gone.values())
        for network in pending:
            handler = self.on_network_gone
            if handler is None:
                return  # kept until its Host, still opening, sets one
            try:
                handler(network)
            except StoreUnavailable:
                raise
            except Exception as exc:  # logged; the next start's reconcile finishes it
                log.exception("keelnet: taking down network %s here", network.name)
                self.last_error = f"taking down network {network.name}: {exc}"
            with self.lock:
                if self._gone.pop(network.id, None) is not None:
                    self.networks_gone.append(network.name)

    def _take_local(self, key: str, value: bytes | None) -> None:
        """Note this host's endpoint record at `key` put or deleted: what a process that
        starts finds of its endpoints (its own `hold`, which comes first, is kept)."""
        endpoint_id = key.rpartition("/")[2]
        if value is None:
            if self._local.pop(endpoint_id, None) is not None:
                self._claims = None
            return
        with contextlib.suppress(KeelnetError):
            endpoint, host, _vtep, _ready = endpoint_from_record(value)
            if host == self.store.host and endpoint_id not in self._local:
                self._local[endpoint_id] = endpoint
                self._claims = None

    def _read(self, parse: Callable[[bytes], T], value: bytes) -> T | None:
        """A record read, or None (noted in `last_error`) for a bad one: one bad record
        must not stop the watch."""
        try:
            return parse(value)
        except KeelnetError as exc:
            self.last_error = str(exc)
            return None

    def _wanted(self, key: str) -> tuple[Network, RemoteEndpoint] | None:
        """The peer to program for the endpoint record at `key`: one ready on another
        live host, of a network the store holds."""
        found = self._peers.get(key)
        if found is None:
            return None
        peer, ready = found
        network = self._networks.get(peer.network_id)
        if not ready or peer.host == self.store.host or peer.host not in self._live:
            return None
        if network is None:
            return None
        taken = self._taken_locally(peer)
        if taken is None:
            self._refused.discard(key)
            return network, peer
        if key not in self._refused:
            self._refused.add(key)
            log.warning(
                "keelnet: ignoring endpoint %s of host %s on network %s: its %s is this "
                "host's endpoint %s's (an address clash, or a forged record in the store)",
                peer.id[:12],
                peer.host,
                network.name,
                taken[0],
                taken[1][:12],
            )
        return None

    def _taken_locally(self, peer: RemoteEndpoint) -> tuple[str, str] | None:
        """("IP x" or "MAC x", the endpoint's id) when one of this host's endpoints holds
        the peer's IP or MAC on its network."""
        if self._claims is None:  # rebuilt after this host's endpoints changed
            self._claims = {}
            for endpoint in self._local.values():
                if endpoint.mac:
                    self._claims[(endpoint.network_id, endpoint.mac.lower())] = endpoint.id
                if endpoint.ip:
                    self._claims[(endpoint.network_id, endpoint.ip)] = endpoint.id
        for what, value in (("IP", peer.ip), ("MAC", peer.mac.lower())):
            holder = self._claims.get((peer.network_id, value))
            if holder is not None:
                return f"{what} {value}", holder
        return None

    def _update(self, keys: Iterable[str]) -> None:
        """Program what changed for these endpoints: every removal first (an address may
        have moved from one endpoint to another in the same batch), then the additions."""
        pending = []
        for key in dict.fromkeys(keys):
            wanted, applied = self._wanted(key), self._applied.get(key)
            if applied is not None and (wanted is None or wanted[1] != applied[1]):
                self._program(self.programmer.remove_peer, *applied)
                del self._applied[key]
            if wanted is not None and key not in self._applied:
                pending.append((key, wanted))
        for key, (network, peer) in pending:
            self._program(self.programmer.add_peer, network, peer)
            self._applied[key] = (network, peer)

    def _program(
        self,
        step: Callable[[Network, RemoteEndpoint], None],
        network: Network,
        peer: RemoteEndpoint,
    ) -> None:
        try:
            step(network, peer)
        except KeelnetError as exc:  # one peer that fails must not stop the others
            self.last_error = f"{peer.ip} on {network.name}: {exc}"
            log.warning("keelnet: programming peer %s: %s", peer.ip, exc)


def _watched(key: str) -> bool:
    return key.startswith((HOSTS, ENDPOINTS, NETWORKS))
