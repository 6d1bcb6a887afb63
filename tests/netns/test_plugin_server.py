"""keelnet's plugin server as an attacker (or a confused client) meets it: malformed,
mistyped, oversized and out-of-order requests get a clear error in the protocol's shape,
teardown requests are idempotent, and the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import http.client
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import Lab
from pluginlab import post, served_plugin

NETWORK_ID = "ab" * 32


@pytest.fixture
def plugin(lab: Lab, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "kn.sock"
    with served_plugin(lab.host, path, tmp_path / "state"):
        yield path


def _raw(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _create_network(plugin: Path, network_id: str = NETWORK_ID, **generic: str) -> Any:
    return post(
        plugin,
        "NetworkDriver.CreateNetwork",
        {
            "NetworkID": network_id,
            "Options": {"com.docker.network.generic": generic},
            "IPv4Data": [{"AddressSpace": "", "Pool": "10.99.0.0/24", "Gateway": "10.99.0.1/24"}],
            "IPv6Data": [],
        },
    )


def test_malformed_requests_get_errors_in_the_protocols_shape(plugin: Path) -> None:
    assert post(plugin, "Plugin.Activate", None) == (
        200,
        {"Implements": ["NetworkDriver", "IpamDriver"]},
    )
    status, answer = post(plugin, "NetworkDriver.NoSuchMethod", {})
    assert status == 404 and "does not implement NetworkDriver.NoSuchMethod" in answer["Err"]
    status, answer = post(plugin, "VolumeDriver.Create", {})
    assert status == 404 and "Err" in answer
    head = b"Host: x\r\nConnection: close\r\n"
    raw = (
        b"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\n" + head + b"Content-Length: 5\r\n\r\n{nope"
    )
    assert raw_status(_raw(plugin, raw)) == 400
    status, answer = post(plugin, "NetworkDriver.CreateNetwork", ["not", "an", "object"])
    assert status == 400 and "must be an object" in answer["Err"]
    status, answer = post(plugin, "NetworkDriver.CreateNetwork", {"NetworkID": 42})
    assert status == 500 and answer["Err"] == "keelnet: NetworkID must be a string, not int"
    status, answer = post(plugin, "NetworkDriver.CreateNetwork", {"NetworkID": "x" * 64})
    assert status == 500 and "invalid network id" in answer["Err"]
    # IPAM errors carry the IPAM protocol's field too.
    status, answer = post(plugin, "IpamDriver.RequestPool", {"AddressSpace": "Nowhere"})
    assert status == 500 and answer["Err"] == answer["Error"] and "Nowhere" in answer["Err"]
    # A body over 1 MiB is refused before it is read; the server keeps serving.
    big = b"POST /NetworkDriver.Join HTTP/1.1\r\n" + head + b"Content-Length: 2000000\r\n\r\n"
    assert raw_status(_raw(plugin, big + b"{" * 2_000_000)) == 413
    get = b"GET /Plugin.Activate HTTP/1.1\r\n" + head + b"\r\n"
    assert raw_status(_raw(plugin, get + b"")) == 405
    assert post(plugin, "NetworkDriver.GetCapabilities", None)[0] == 200


def raw_status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_requests_for_networks_and_endpoints_keelnet_does_not_know(plugin: Path) -> None:
    endpoint = {"NetworkID": NETWORK_ID, "EndpointID": "cd" * 32}
    for method in ("CreateEndpoint", "Join", "EndpointOperInfo", "ProgramExternalConnectivity"):
        status, answer = post(plugin, f"NetworkDriver.{method}", {**endpoint, "SandboxKey": "/x"})
        assert status == 500 and "is not known to keelnet" in answer["Err"], method
    # Teardown of what is not there succeeds: dockerd replays it after restarts.
    for method in ("Leave", "DeleteEndpoint", "RevokeExternalConnectivity", "DeleteNetwork"):
        assert post(plugin, f"NetworkDriver.{method}", endpoint) == (200, {}), method
    assert post(plugin, "IpamDriver.ReleasePool", {"PoolID": "LocalDefault/10.1.0.0/24"})[0] == 200


def test_sandbox_keys_that_are_no_namespace_are_refused(plugin: Path) -> None:
    assert _create_network(plugin) == (200, {})
    assert _create_network(plugin) == (200, {})  # replayed: already made
    endpoint = {"NetworkID": NETWORK_ID, "EndpointID": "cd" * 32}
    interface = {"Address": "10.99.0.2/24", "AddressIPv6": "", "MacAddress": ""}
    status, answer = post(
        plugin, "NetworkDriver.CreateEndpoint", {**endpoint, "Interface": interface}
    )
    assert status == 200 and set(answer["Interface"]) == {"MacAddress"}
    for key in ("relative/path", "/etc/hostname", "/proc/self/ns/pid"):
        status, answer = post(plugin, "NetworkDriver.Join", {**endpoint, "SandboxKey": key})
        assert status == 500 and "is not a network namespace's path" in answer["Err"], key
    status, answer = post(plugin, "NetworkDriver.Join", {**endpoint, "SandboxKey": "/run/kn-a"})
    assert status == 200 and answer["InterfaceName"]["SrcName"] == f"kn-c{'cd' * 6}"[:15]
    assert post(plugin, "NetworkDriver.Join", {**endpoint, "SandboxKey": "/run/kn-a"}) == (
        status,
        answer,
    )
    status, answer = post(plugin, "NetworkDriver.Join", {**endpoint, "SandboxKey": "/run/kn-b"})
    assert status == 500 and "already joined" in answer["Err"]
    assert post(plugin, "NetworkDriver.DeleteEndpoint", endpoint) == (200, {})
    assert post(plugin, "NetworkDriver.DeleteNetwork", {"NetworkID": NETWORK_ID}) == (200, {})


def test_drivers_that_cannot_serve_docker_are_refused(plugin: Path) -> None:
    for driver in ("host", "none", "nosuch", "../../bin/sh"):
        status, answer = _create_network(plugin, **{"keelnet.driver": driver})
        assert status == 500 and "keelnet serves Docker with the drivers" in answer["Err"]
        assert "bridge, " in answer["Err"] or "bridge" in answer["Err"]


def test_concurrent_requests_are_served_one_at_a_time(plugin: Path) -> None:
    assert _create_network(plugin) == (200, {})

    def create(number: int) -> tuple[int, Any]:
        return post(
            plugin,
            "NetworkDriver.CreateEndpoint",
            {
                "NetworkID": NETWORK_ID,
                "EndpointID": f"{number:02d}" * 32,
                "Interface": {"Address": f"10.99.0.{number + 10}/24", "MacAddress": ""},
            },
        )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(create, range(24)))
    assert [status for status, _ in answers] == [200] * 24
    assert len({answer["Interface"]["MacAddress"] for _, answer in answers}) == 24
    for number in range(24):
        endpoint = {"NetworkID": NETWORK_ID, "EndpointID": f"{number:02d}" * 32}
        assert post(plugin, "NetworkDriver.DeleteEndpoint", endpoint) == (200, {})
    assert post(plugin, "NetworkDriver.DeleteNetwork", {"NetworkID": NETWORK_ID}) == (200, {})


def test_http_keep_alive_connections_are_served(plugin: Path) -> None:
    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(str(plugin))

    connection = Connection("plugin.moby.localhost")
    try:
        for _ in range(3):
            connection.request("POST", "/NetworkDriver.GetCapabilities", body=b"")
            response = connection.getresponse()
            assert response.status == 200 and b'"Scope": "local"' in response.read()
    finally:
        connection.close()
