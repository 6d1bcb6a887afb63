"""A minimal Docker network + IPAM plugin, written apart from keelnet to test keelnet's
client against code that is not its own.

It serves HTTP with the standard library's http.server on a unix socket, plumbs with the
`ip` command (never keelnet's modules), keeps its state in dicts, and records every request
it gets. Its network is a Linux bridge `kn-mb<id6>`; an endpoint is a veth pair
`kn-mh<id6>`/`kn-mc<id6>`, the latter handed to the caller in Join with a gateway and two
static routes. Its IPAM hands out 10.97.N.0/24 pools, addresses counted up from .1. What it
answers can be bent per method (`answers`) to test how the client takes errors.
"""

from __future__ import annotations

import ipaddress
import json
import socketserver
import subprocess
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

#: The routes Join asks for besides the default one: via the gateway, and on-link.
ROUTE_VIA = "198.51.100.0/24"
ROUTE_ON_LINK = "203.0.113.0/24"


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class MiniPlugin:
    def __init__(self, socket_path: Path, netns: str) -> None:
        self.socket_path = socket_path
        self.netns = netns
        self.requests: list[tuple[str, Any]] = []
        #: method -> (status, body) to answer instead of doing the work
        self.answers: dict[str, tuple[int, Any]] = {}
        self.networks: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, str]] = {}
        self.pools: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        plugin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw) if raw.strip() else None
                method = self.path.lstrip("/")
                status, answer = plugin.handle(method, body)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.server = _UnixHTTPServer(str(socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MiniPlugin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.socket_path.unlink(missing_ok=True)
        for network_id in list(self.networks):
            self._NetworkDriver_DeleteNetwork({"NetworkID": network_id})
        for endpoint in list(self.endpoints.values()):
            self._ip("link", "del", endpoint["host"], check=False)

    def methods(self) -> list[str]:
        return [method for method, _ in self.requests]

    def _ip(self, *argv: str, check: bool = True) -> None:
        subprocess.run(["ip", "-n", self.netns, *argv], check=check, capture_output=True)

    def _iptables(self, *argv: str) -> None:
        command = ["ip", "netns", "exec", self.netns, "iptables", "-w", *argv]
        subprocess.run(command, check=True, capture_output=True)

    def handle(self, method: str, body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, body))
            if method in self.answers:
                return self.answers[method]
            work = getattr(self, "_" + method.replace(".", "_"), None)
            if work is None:
                return 404, b"404 page not found\n"
            try:
                return 200, work(body)
            except subprocess.CalledProcessError as exc:
                return 500, {"Err": f"mini: {exc.stderr.decode().strip()}"}

    # --- handshake -------------------------------------------------------------------------

    def _Plugin_Activate(self, body: Any) -> Any:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    def _NetworkDriver_GetCapabilities(self, body: Any) -> Any:
        return {"Scope": "local"}

    # --- network driver ----------------------------------------------------------------------

    def _NetworkDriver_CreateNetwork(self, body: Any) -> Any:
        network_id = body["NetworkID"]
        data = body["IPv4Data"][0]
        bridge = f"kn-mb{network_id[:6]}"
        self._ip("link", "add", bridge, "type", "bridge")
        self._ip("addr", "add", data["Gateway"], "dev", bridge)
        self._ip("link", "set", bridge, "up")
        # Beside Docker, iptables drops forwarded (and with br_netfilter, bridged) packets:
        # a plugin lets its own bridge's through, as Docker's bridge driver does.
        self._iptables("-I", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT")
        self.networks[network_id] = {
            "bridge": bridge,
            "gateway": data["Gateway"].split("/")[0],
            "options": body["Options"],
        }
        return {}

    def _NetworkDriver_DeleteNetwork(self, body: Any) -> Any:
        network = self.networks.pop(body["NetworkID"], None)
        if network is not None:
            self._ip("link", "del", network["bridge"])
            bridge = network["bridge"]
            self._iptables("-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT")
        return {}

    def _NetworkDriver_CreateEndpoint(self, body: Any) -> Any:
        network = self.networks[body["NetworkID"]]
        endpoint_id = body["EndpointID"]
        host, peer = f"kn-mh{endpoint_id[:6]}", f"kn-mc{endpoint_id[:6]}"
        self._ip("link", "add", host, "type", "veth", "peer", "name", peer)
        self._ip("link", "set", host, "master", network["bridge"], "up")
        self.endpoints[endpoint_id] = {"host": host, "peer": peer}
        if body["Interface"].get("MacAddress"):
            return {}
        return {"Interface": {"MacAddress": "02:6d:69:6e:69:01"}}

    def _NetworkDriver_Join(self, body: Any) -> Any:
        network = self.networks[body["NetworkID"]]
        endpoint = self.endpoints[body["EndpointID"]]
        return {
            "InterfaceName": {"SrcName": endpoint["peer"], "DstPrefix": "eth"},
            "Gateway": network["gateway"],
            "StaticRoutes": [
                {"Destination": ROUTE_VIA, "RouteType": 0, "NextHop": network["gateway"]},
                {"Destination": ROUTE_ON_LINK, "RouteType": 1},
            ],
        }

    def _NetworkDriver_Leave(self, body: Any) -> Any:
        return {}

    def _NetworkDriver_DeleteEndpoint(self, body: Any) -> Any:
        endpoint = self.endpoints.pop(body["EndpointID"], None)
        if endpoint is not None:
            self._ip("link", "del", endpoint["host"])
        return {}

    # --- IPAM --------------------------------------------------------------------------------

    def _IpamDriver_GetDefaultAddressSpaces(self, body: Any) -> Any:
        return {"LocalDefaultAddressSpace": "mini-local", "GlobalDefaultAddressSpace": "mini"}

    def _IpamDriver_RequestPool(self, body: Any) -> Any:
        if body["AddressSpace"] != "mini-local":
            return {"Error": f"unknown address space {body['AddressSpace']}"}
        subnet = body["Pool"] or f"10.97.{len(self.pools)}.0/24"
        pool_id = f"mini/{subnet}"
        self.pools[pool_id] = {"subnet": ipaddress.ip_network(subnet), "given": set()}
        return {"PoolID": pool_id, "Pool": subnet, "Data": {}}

    def _IpamDriver_ReleasePool(self, body: Any) -> Any:
        self.pools.pop(body["PoolID"], None)
        return {}

    def _IpamDriver_RequestAddress(self, body: Any) -> Any:
        pool = self.pools.get(body["PoolID"])
        if pool is None:
            return {"Error": f"no pool {body['PoolID']}"}
        if body["Address"]:
            address = ipaddress.ip_address(body["Address"])
        else:
            address = next(a for a in pool["subnet"].hosts() if a not in pool["given"])
        if address in pool["given"]:
            return {"Error": f"{address} is taken"}
        pool["given"].add(address)
        return {"Address": f"{address}/{pool['subnet'].prefixlen}", "Data": {}}

    def _IpamDriver_ReleaseAddress(self, body: Any) -> Any:
        pool = self.pools.get(body["PoolID"])
        if pool is not None:
            pool["given"].discard(ipaddress.ip_address(body["Address"]))
        return {}
