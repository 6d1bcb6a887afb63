"""Docker plugins as keelnet finds and calls them, playing dockerd's part.

A plugin `NAME` is found where dockerd finds it (:data:`protocol.SOCKET_DIR`, then
:data:`protocol.SPEC_DIRS`), activated once (`Plugin.Activate`), and called over HTTP/1.1
with the standard library's client: on a unix socket, or at a `tcp://`/`http(s)://`
address with the `.json` spec's TLS settings. Like dockerd, a call whose connection fails
is retried for a while (the plugin may be restarting); an answer with an error raises
:class:`~keelnet.plugin.protocol.PluginError` carrying the plugin's message.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from keelnet.errors import InvalidSubnet, UnknownDriver
from keelnet.ipam.contract import PoolLease
from keelnet.plugin import protocol
from keelnet.plugin.protocol import MethodNotFound, PluginError, PluginUnavailable

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: How long a call retries a plugin that does not answer (dockerd: 30 s).
RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class PluginAddress:
    """Where plugin `name` listens: `url` (unix://, tcp://, http://, https://), with the
    TLS settings of a `.json` spec."""

    name: str
    url: str
    tls: Mapping[str, Any] = field(default_factory=dict)


def find_plugin(
    name: str,
    *,
    socket_dir: Path | None = None,
    spec_dirs: tuple[Path, ...] | None = None,
    missing: str | None = None,
) -> PluginAddress:
    """Look plugin `name` up as dockerd does; UnknownDriver when it is nowhere, its
    message starting with `missing` (default: that no such network driver exists)."""
    if not _NAME.match(name):
        raise UnknownDriver(f"invalid plugin name {name!r}")
    socket_dir = protocol.SOCKET_DIR if socket_dir is None else socket_dir
    spec_dirs = protocol.SPEC_DIRS if spec_dirs is None else spec_dirs
    sockets = [socket_dir / f"{name}.sock", socket_dir / name / f"{name}.sock"]
    for path in sockets:
        if path.is_socket():
            return PluginAddress(name, f"unix://{path}")
    specs = [
        directory / f"{sub}{name}{ext}"
        for directory in spec_dirs
        for ext in (".spec", ".json")
        for sub in ("", f"{name}/")
    ]
    for path in specs:
        if path.is_file():
            return _read_spec(name, path)
    missing = missing or f"plugin {name!r} not found: no such network driver, and"
    raise UnknownDriver(
        f"{missing} no plugin socket or spec for it "
        f"({', '.join(str(p) for p in [*sockets, *specs])})"
    )


def _read_spec(name: str, path: Path) -> PluginAddress:
    try:
        content = path.read_text()
    except OSError as exc:
        raise PluginError(f"plugin {name}: cannot read {path}: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            spec = json.loads(content)
            url, tls = spec["Addr"], spec.get("TLSConfig") or {}
            if not isinstance(url, str) or not isinstance(tls, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise PluginError(f"plugin {name}: {path} is not a plugin spec") from None
    else:
        url, tls = content.strip(), {}
    if urlparse(url).scheme not in ("unix", "tcp", "http", "https"):
        raise PluginError(f"plugin {name}: {path}: unknown protocol in {url!r}")
    return PluginAddress(name, url, tls)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        # dockerd's Host header for plugins on sockets
        super().__init__("plugin.moby.localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class PluginClient:
    """Calls `Subsystem.Method` of one plugin; returns the answer's JSON object."""

    def __init__(self, address: PluginAddress, *, timeout: float = 120.0) -> None:
        self.address = address
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        url = urlparse(self.address.url)
        if url.scheme == "unix":
            return _UnixConnection(url.path, self.timeout)
        host, port = url.hostname or "localhost", url.port or 80
        if url.scheme == "https" or self.address.tls:
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=_tls_context(self.address.tls)
            )
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def call(self, method: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        # No arguments: an empty body, as dockerd sends (not `null`).
        payload = b"" if body is None else json.dumps(body).encode()
        status, data = self._post(method, payload)
        if status == 404:
            raise MethodNotFound(f"{method}: plugin {self.address.name} does not implement it")
        try:
            answer = json.loads(data) if data.strip() else None
        except ValueError:
            answer = None
        if status != 200:
            message = answer.get("Err") if isinstance(answer, dict) else None
            raise PluginError(f"{method}: {message or data.decode(errors='replace').strip()}")
        if not isinstance(answer, dict):
            raise PluginError(f"{method}: plugin {self.address.name} answered no JSON object")
        error = answer.get("Err") or answer.get("Error")
        if error:
            raise PluginError(f"{method}: {error}")
        return answer

    def _post(self, method: str, payload: bytes) -> tuple[int, bytes]:
        deadline = time.monotonic() + RETRY_SECONDS
        pause = 0.05
        while True:
            connection = self._connection()
            try:
                connection.request(
                    "POST", f"/{method}", body=payload, headers={"Accept": protocol.ACCEPT}
                )
                response = connection.getresponse()
                return response.status, response.read()
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                if time.monotonic() + pause > deadline:
                    raise PluginUnavailable(
                        f"{method}: plugin {self.address.name} does not answer at "
                        f"{self.address.url}: {exc.strerror or exc}"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            except (OSError, http.client.HTTPException) as exc:
                raise PluginUnavailable(
                    f"{method}: talking to plugin {self.address.name}: {exc}"
                ) from None
            finally:
                connection.close()


def _tls_context(tls: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.get("CAFile") or None)
    if tls.get("CertFile"):
        context.load_cert_chain(tls["CertFile"], tls.get("KeyFile") or None)
    # dockerd skips verification when no CA is given (and when asked to).
    if tls.get("InsecureSkipVerify") or not tls.get("CAFile"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Plugin:
    """A found plugin, activated on first use: what it implements is asked once."""

    def __init__(self, address: PluginAddress) -> None:
        self.name = address.name
        self.client = PluginClient(address)
        self._implements: list[str] | None = None
        self._scope: str | None = None

    def implements(self) -> list[str]:
        if self._implements is None:
            answer = self.client.call("Plugin.Activate")
            kinds = answer.get("Implements") or []
            if not isinstance(kinds, list):
                raise PluginError(f"Plugin.Activate: {self.name} answered no Implements list")
            self._implements = [str(kind) for kind in kinds]
        return self._implements

    def require(self, kind: str) -> None:
        if kind not in self.implements():
            raise UnknownDriver(
                f"plugin {self.name} is no {kind} (it implements "
                f"{', '.join(self.implements()) or 'nothing'})"
            )

    def network_scope(self) -> str:
        """The network driver's scope, checked as dockerd checks it at registration."""
        if self._scope is None:
            self.require(protocol.NETWORK_DRIVER)
            answer = self.client.call("NetworkDriver.GetCapabilities")
            scope = answer.get("Scope")
            if scope not in ("local", "global"):
                raise PluginError(
                    f"invalid capability: expecting 'local' or 'global', got {scope!r}"
                )
            self._scope = str(scope)
        return self._scope


_plugins: dict[tuple[str, str], Plugin] = {}


def check_not_served_here(plugin: Plugin, instead: str) -> None:
    """Refuse keelnet's own plugin when this thread runs the Host serving it: the call
    would wait for itself. `instead` says what to use."""
    if protocol.served_here.get(plugin.client.address.url) == threading.get_ident():
        raise PluginError(
            f"plugin {plugin.name} is keelnet's own, served by this process for this store: "
            f"{instead}"
        )


def plugin(name: str, *, missing: str | None = None) -> Plugin:
    """Plugin `name` as found now (one object per address for the process's life)."""
    address = find_plugin(name, missing=missing)
    key = (name, address.url)
    if key not in _plugins:
        _plugins[key] = Plugin(address)
    return _plugins[key]


class RemoteIpam:
    """A Docker IPAM plugin behind keelnet's IPAM contract."""

    def __init__(self, plugin: Plugin) -> None:
        plugin.require(protocol.IPAM_DRIVER)
        self.plugin = plugin

    def _call(self, method: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.plugin.client.call(f"{protocol.IPAM_DRIVER}.{method}", body)

    def address_spaces(self) -> tuple[str, str]:
        answer = self._call("GetDefaultAddressSpaces")
        local, global_ = (
            answer.get("LocalDefaultAddressSpace"),
            answer.get("GlobalDefaultAddressSpace"),
        )
        if not isinstance(local, str) or not local:
            raise PluginError("GetDefaultAddressSpaces: no LocalDefaultAddressSpace")
        return local, str(global_ or "")

    def request_pool(
        self,
        address_space: str,
        pool: str | None,
        sub_pool: str | None,
        options: Mapping[str, str],
        v6: bool,
    ) -> PoolLease:
        answer = self._call(
            "RequestPool",
            {
                "AddressSpace": address_space,
                "Pool": pool or "",
                "SubPool": sub_pool or "",
                "Options": dict(options),
                "V6": v6,
            },
        )
        pool_id, subnet = answer.get("PoolID"), answer.get("Pool")
        if not isinstance(pool_id, str) or not isinstance(subnet, str):
            raise PluginError("RequestPool: the answer lacks PoolID or Pool")
        try:
            ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise InvalidSubnet(f"RequestPool: the plugin answered pool {subnet!r}") from None
        data = answer.get("Data") or {}
        return PoolLease(pool_id, subnet, {str(k): str(v) for k, v in dict(data).items()})

    def release_pool(self, pool_id: str) -> None:
        self._call("ReleasePool", {"PoolID": pool_id})

    def request_address(
        self, pool_id: str, address: str | None, options: Mapping[str, str] | None
    ) -> str:
        body = {"PoolID": pool_id, "Address": address or "", "Options": dict(options or {})}
        answer = self._call("RequestAddress", body)
        given = answer.get("Address")
        if not isinstance(given, str) or not given:
            raise PluginError("RequestAddress: no address returned")
        return given

    def release_address(self, pool_id: str, address: str) -> None:
        self._call("ReleaseAddress", {"PoolID": pool_id, "Address": address})


def remote_ipam(name: str) -> RemoteIpam:
    """Docker IPAM plugin `name` (keelnet's own IPAM is "default")."""
    missing = f'IPAM driver "{name}" not found: keelnet has the "default" one, and'
    found = plugin(name, missing=missing)
    check_not_served_here(found, 'use keelnet\'s IPAM directly (--ipam-driver "default")')
    return RemoteIpam(found)
