"""etcd v3 through its JSON gateway (etcd3gw), with fail-over between cluster members.

etcd3gw talks to one member and knows nothing of the others; this module keeps one
etcd3gw client per member and moves to the next member when one does not answer, so a
stopped member changes nothing for callers. When no member answers, the call fails at
once with :class:`~keelnet.errors.StoreUnavailable` (connect timeout: `CONNECT_TIMEOUT`).

The gateway path is pinned to ``/v3/``: etcd 3.4 (Debian's) serves it beside the older
``/v3beta/``, and since 3.5 it is the only one.

Watches: etcd3gw's watcher reports events but neither the end of its stream (a member
that died) nor a watch cancelled because its start revision was compacted. A
:class:`Watch` learns both by reading the stream through a session of its own
(``_WatchSession``): its consumer gets ``WatchEnded(compacted=...)`` and starts again,
from the revision it had reached, or from a fresh list when that was compacted.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client
from etcd3gw.lease import Lease
from etcd3gw.types import Event
from etcd3gw.watch import Watcher

from keelnet.errors import InvalidRequest, StoreUnavailable
from keelnet.kernel.namespaces import call_in_netns

API_PATH = "/v3/"
CONNECT_TIMEOUT = 2.0
REQUEST_TIMEOUT = 5.0
_UNREACHABLE = (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError)


def parse_url(url: str) -> list[tuple[str, int]]:
    """`etcd://host:port[,host:port...]` → [(host, port)]; port 2379 when left out."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.netloc:
        raise InvalidRequest(
            f"invalid store {url!r}: use etcd://HOST:PORT[,HOST:PORT...] (an etcd cluster)"
        )
    endpoints = []
    for item in parts.netloc.split(","):
        host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        if item.startswith("["):  # [v6]:port
            host, _, port = item[1:].partition("]")
            port = port.lstrip(":")
        host = host or item
        if not port:
            port = "2379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequest(f"invalid etcd endpoint {item!r} in {url!r}: use HOST:PORT")
        endpoints.append((host, int(port)))
    return endpoints


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


def _key_value(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw["key"]).decode(),
        value=_unb64(raw.get("value", "")),
        mod_revision=int(raw.get("mod_revision", 0)),
        create_revision=int(raw.get("create_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: the key's mod revision (0: it does not exist).

    With `prefix`, every key under `key` must have a mod revision below `below`."""

    key: str
    mod_revision: int = 0
    prefix: bool = False
    below: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.prefix:
            return {
                "key": _b64(self.key),
                "range_end": _b64(prefix_end(self.key)),
                "target": "MOD",
                "result": "LESS",
                "mod_revision": self.below,
            }
        return {
            "key": _b64(self.key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": self.mod_revision,
        }


@dataclass
class Txn:
    """Puts and deletes applied together when every compare holds."""

    compares: list[Compare]
    puts: list[tuple[str, bytes, int]]  # key, value, lease (0: none)
    deletes: list[str]
    #: Every key under each of these goes too (one operation, however many keys).
    delete_prefixes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        success: list[dict[str, Any]] = []
        for key, value, lease in self.puts:
            put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
            if lease:
                put["lease"] = lease
            success.append({"request_put": put})
        success += [{"request_delete_range": {"key": _b64(key)}} for key in self.deletes]
        success += [
            {"request_delete_range": {"key": _b64(key), "range_end": _b64(prefix_end(key))}}
            for key in self.delete_prefixes
        ]
        return {
            "compare": [c.to_json() for c in self.compares],
            "success": success,
            "failure": [],
        }


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True)
class WatchEnded:
    """The watch stream ended: its member went away, or (`compacted`) etcd cancelled it
    because its start revision is gone; list again then."""

    compacted: bool


class _WatchSession(requests.Session):
    """A session whose streams tell `ended` when they finish or are cancelled."""

    def __init__(self, ended: queue.Queue[WatchEvent | WatchEnded]) -> None:
        super().__init__()
        self._ended = ended

    def post(self, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        streaming = bool(kwargs.get("stream"))
        # Connect fast, then wait as long as the stream lasts.
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT, None if streaming else REQUEST_TIMEOUT))
        response = super().post(url, *args, **kwargs)
        if streaming:
            chunks = response.iter_content
            ended = self._ended

            def watched(*a: Any, **kw: Any) -> Iterator[bytes]:
                compacted = False
                try:
                    for chunk in chunks(*a, **kw):
                        for line in chunk.splitlines():
                            with contextlib.suppress(ValueError):
                                result = json.loads(line).get("result", {})
                                if result.get("canceled") or result.get("compact_revision"):
                                    compacted = bool(result.get("compact_revision"))
                                    return
                        yield chunk
                finally:
                    ended.put(WatchEnded(compacted=compacted))

            response.iter_content = watched  # type: ignore[method-assign]
        return response


class Watch:
    """Events under a prefix from a start revision, then `WatchEnded` when it stops."""

    def __init__(self, client: EtcdClient, prefix: str, start_revision: int) -> None:
        self.events: queue.Queue[WatchEvent | WatchEnded] = queue.Queue()
        host, port = self.member = client.current
        self._client = Etcd3Client(
            host, port, api_path=API_PATH, session=_WatchSession(self.events)
        )
        try:
            self._watcher = call_in_netns(
                client.netns_path,
                lambda: Watcher(
                    self._client,
                    prefix,
                    self._on_event,
                    start_revision=start_revision,
                    range_end=prefix_end(prefix),
                ),
            )
        except requests.RequestException as exc:
            client.rotate()
            raise StoreUnavailable(f"cannot watch etcd at {host}:{port}: {exc}") from None

    def _on_event(self, event: Event) -> None:
        kv: Any = event["kv"]
        key = kv["key"].decode() if isinstance(kv["key"], bytes) else str(kv["key"])
        value = kv.get("value", b"")
        self.events.put(
            WatchEvent(
                kind="delete" if event.get("type") == "DELETE" else "put",
                key=key,
                value=value if isinstance(value, bytes) else str(value).encode(),
                revision=int(kv.get("mod_revision", 0)),
            )
        )

    def cancel(self) -> None:
        self._watcher.stop()


class EtcdClient:
    """The members of one etcd cluster; each call goes to the first that answers."""

    def __init__(self, url: str, netns_path: str | None = None) -> None:
        self.url = url
        self.netns_path = netns_path
        self.endpoints = parse_url(url)
        self._clients = [
            Etcd3Client(host, port, api_path=API_PATH, timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT))  # type: ignore[arg-type]
            for host, port in self.endpoints
        ]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> tuple[str, int]:
        return self.endpoints[self._current]

    def rotate(self) -> None:
        with self._lock:
            self._current = (self._current + 1) % len(self._clients)

    def close(self) -> None:
        for client in self._clients:
            client.session.close()

    def _call(self, what: str, call: Any) -> Any:
        failures = []
        for _ in range(len(self._clients)):
            index = self._current
            client = self._clients[index]
            try:
                # Connections are made from the host's namespace, where its underlay is.
                return call_in_netns(self.netns_path, functools.partial(call, client))
            except _UNREACHABLE as exc:
                failures.append(f"{self.endpoints[index][0]}:{self.endpoints[index][1]}")
                with self._lock:
                    if self._current == index:
                        self._current = (index + 1) % len(self._clients)
                last = exc
            except etcd_errors.Etcd3Exception as exc:
                # A member without quorum answers "request timed out" or 503.
                detail = exc.detail_text or str(exc)
                raise StoreUnavailable(f"etcd refused to {what}: {detail.strip()}") from None
        raise StoreUnavailable(
            f"the etcd store is unreachable (tried {', '.join(failures)}: "
            f"{type(last).__name__}); start etcd or check --store / $KEELNET_STORE"
        ) from None

    # --- key-value -----------------------------------------------------------------------

    def range(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        """The keys (one, or all under a prefix) and the store's revision they were read at."""
        request: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            request["range_end"] = _b64(prefix_end(key))
        txn = {"compare": [], "success": [{"request_range": request}], "failure": []}
        result = self._call("read", lambda c: c.transaction(txn))
        revision = int(result["header"]["revision"])
        responses = result.get("responses", [])
        raw = responses[0].get("response_range", {}).get("kvs", []) if responses else []
        return [_key_value(item) for item in raw], revision

    def get(self, key: str) -> KeyValue | None:
        found, _ = self.range(key)
        return found[0] if found else None

    def txn(self, txn: Txn) -> bool:
        """Apply the transaction; False when a compare did not hold (nothing applied)."""
        body = txn.to_json()
        result = self._call("write", lambda c: c.transaction(body))
        return bool(result.get("succeeded", False))

    def put(self, key: str, value: bytes, lease: int = 0) -> None:
        self.txn(Txn([], [(key, value, lease)], []))

    def delete(self, key: str) -> None:
        self.txn(Txn([], [], [key]))

    def compacted_since(self, revision: int) -> bool:
        """Whether history at `revision` is gone (a watch from there would be cancelled)."""

        def read_at(client: Etcd3Client) -> None:
            client.get("\0", revision=revision, count_only=True)

        try:
            self._call("read", read_at)
        except StoreUnavailable as exc:
            if "compacted" in str(exc):
                return True
            raise
        return False

    # --- leases --------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self._call("grant a lease", lambda c: c.lease(ttl)).id)

    def keepalive(self, lease: int) -> int:
        """Refresh the lease; its remaining TTL, or -1 when it has expired."""
        return int(self._call("keep a lease alive", lambda c: Lease(lease, c).refresh()))

    def revoke(self, lease: int) -> None:
        self._call("revoke a lease", lambda c: Lease(lease, c).revoke())

    def watch(self, prefix: str, start_revision: int) -> Watch:
        return Watch(self, prefix, start_revision)
