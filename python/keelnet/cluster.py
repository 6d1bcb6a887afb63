"""This host as a member of a cluster store: its lease, its watch, its peers.

The process that owns a :class:`~keelnet.host.Host` with an etcd store (a library
user's program or `keelnet agent`) is the host's member: it holds a lease (TTL a few
seconds, kept alive every third of it) with the host's record `hosts/<name>` under it,
so a host that dies leaves the cluster when its lease runs out. One thread lists the
store once, remembers the revision, and then only watches from there; when the watch
ends (its etcd member went away) it resumes from the last revision it saw, and lists
again only when that revision was compacted. Nothing re-reads the store on a timer.

From what it knows it keeps, per global network, the remote endpoints that are ready
and whose host is alive, and programs the difference into the data plane (through
`PeerProgrammer`) each time something changes. While etcd is unreachable the data
plane keeps its last state: existing flows keep forwarding.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from keelnet.errors import KeelnetError, StoreUnavailable
from keelnet.model import Network, RemoteEndpoint
from keelnet.store.etcd import (
    ENDPOINTS,
    HOSTS,
    NETWORKS,
    PREFIX,
    EtcdStore,
    network_from_json,
    remote_endpoint,
)
from keelnet.store.etcd_client import Watch, WatchEnded, WatchEvent

log = logging.getLogger(__name__)
DEFAULT_LEASE_TTL = 3


class PeerProgrammer(Protocol):
    def add_peer(self, network: Network, peer: RemoteEndpoint) -> None: ...
    def remove_peer(self, network: Network, peer: RemoteEndpoint) -> None: ...


class ClusterMember:
    """Membership (lease) and the peer watch of one host; `start()`, then `close()`."""

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
        #: Held while peers are programmed; drivers hold it while they replay peers.
        self.lock = threading.RLock()
        self.lease = 0
        self.revision = 0  # the last store revision seen (list or watch)
        self.relists = 0  # full lists so far (the first one included)
        self.last_error: str | None = None
        self._cache: dict[str, bytes] = {}
        self._applied: dict[tuple[str, str], tuple[Network, RemoteEndpoint]] = {}
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
            return [peer for (nid, _), (_, peer) in self._applied.items() if nid == network_id]

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_keepalive:
                    self._keep_lease()
                if self._watch is None:
                    self._resume()
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
            self._cache = {kv.key: kv.value for kv in found if _watched(kv.key)}
            self.revision = revision
            self.relists += 1
            self._sync()

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
            for item in batch:
                if isinstance(item, WatchEnded):
                    self._cancel_watch()
                    if item.compacted:
                        self._relist()
                    break
                if not _watched(item.key):
                    self.revision = max(self.revision, item.revision)
                    continue
                if item.kind == "put":
                    self._cache[item.key] = item.value
                else:
                    self._cache.pop(item.key, None)
                self.revision = max(self.revision, item.revision)
            self._sync()

    def _sync(self) -> None:
        """Program what changed between the peers wanted now and those programmed."""
        live = {key[len(HOSTS) :] for key in self._cache if key.startswith(HOSTS)}
        networks: dict[str, Network] = {}
        wanted: dict[tuple[str, str], tuple[Network, RemoteEndpoint]] = {}
        for key, value in self._cache.items():
            if not key.startswith(ENDPOINTS):
                continue
            try:
                found = remote_endpoint(value)
            except KeelnetError as exc:
                self.last_error = str(exc)
                continue
            if found is None:
                continue
            peer, ready = found
            if not ready or peer.host == self.store.host or peer.host not in live:
                continue
            if peer.network_id not in networks:
                data = self._cache.get(NETWORKS + peer.network_id)
                if data is None:
                    continue
                networks[peer.network_id] = network_from_json(data)
            wanted[(peer.network_id, peer.id)] = (networks[peer.network_id], peer)
        for pair, (network, peer) in list(self._applied.items()):
            still = wanted.get(pair)
            if still is None or still[1] != peer:
                self._program(self.programmer.remove_peer, network, peer)
                del self._applied[pair]
        for pair, (network, peer) in wanted.items():
            if pair not in self._applied:
                self._program(self.programmer.add_peer, network, peer)
                self._applied[pair] = (network, peer)

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
