"""Docker plugins as keelnet drivers: keelnet plays dockerd's part.

Against keelnet's own served plugin, and against an independent minimal plugin (another
HTTP server, plumbing with the `ip` command) so the client is not only tested against
itself; the requests keelnet sends are held against the ones dockerd 20.10 sent in a
recorded session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from miniplugin import ROUTE_ON_LINK, ROUTE_VIA, MiniPlugin
from netlab import Lab, create_ns
from nettools import ping
from pluginlab import served_plugin

import keelnet
from keelnet.drivers import get_driver
from keelnet.drivers.base import HostContext
from keelnet.errors import KernelError, UnknownDriver
from keelnet.kernel import links
from keelnet.kernel.namespaces import iproute, netns_path
from keelnet.kernel.ownership import Owner, new_store_id
from keelnet.kernel.rtnl import Rtnl
from keelnet.model import Endpoint, IpamConfig, Network
from keelnet.plugin import client
from keelnet.plugin.protocol import PluginError, PluginUnavailable

RECORDED = Path(__file__).parent.parent / "data" / "dockerd-20.10.24-requests.jsonl"


@pytest.fixture
def mini(lab: Lab, plugin_dirs: Path) -> Iterator[MiniPlugin]:
    with MiniPlugin(plugin_dirs / f"{lab.prefix}-mini.sock", lab.host) as plugin:
        yield plugin


@pytest.fixture
def served(lab: Lab, plugin_dirs: Path, tmp_path: Path) -> Iterator[str]:
    """keelnet's plugin, named `<prefix>-kn`, its store owning the lab's host namespace."""
    name = f"{lab.prefix}-kn"
    with served_plugin(lab.host, plugin_dirs / f"{name}.sock", tmp_path / "served-state"):
        yield name


def sandbox_view(name: str) -> dict[str, Any]:
    """Links (name -> MAC, alias), addresses and routes of a sandbox, as the kernel has them."""
    with iproute(netns_path(name)) as ipr:
        names = {int(link["index"]): str(link.get("ifname")) for link in ipr.link("dump")}
        return {
            "links": {
                str(link.get("ifname")): (str(link.get("address")), link.get("ifalias"))
                for link in ipr.link("dump")
            },
            "addresses": {
                f"{a.get('address')}/{a['prefixlen']}": names[int(a["index"])]
                for a in ipr.addr("dump")
            },
            "routes": {
                (
                    f"{r.get('dst') or 'default'}/{r['dst_len']}",
                    r.get("gateway"),
                    names.get(int(r.get("oif") or 0)),
                )
                for r in ipr.route("dump")
                if r["table"] == 254
            },
        }


def host_links(lab: Lab) -> set[str]:
    with iproute(netns_path(lab.host)) as ipr:
        return {str(link.get("ifname")) for link in ipr.link("dump")}


def test_keelnets_remote_driver_drives_keelnets_served_plugin(lab: Lab, served: str) -> None:
    """keelnet's client side (the remote driver, doing dockerd's part) against its server
    side, through the socket. One namespace has one keelnet store (the plugin's owns it
    here), so the driver runs as a Host would run it, without a store of its own."""
    with contextlib.ExitStack() as stack:
        ipr = stack.enter_context(iproute(netns_path(lab.host)))
        rtnl = stack.enter_context(Rtnl(netns_path(lab.host)))
        ctx = HostContext(netns_path(lab.host), ipr, rtnl, Owner(new_store_id()))
        driver = get_driver(served)
        assert driver.dataplanes == ("remote",)
        network = Network(
            id=secrets.token_hex(32),
            name="remote",
            driver=served,
            dataplane="remote",
            created="",
            ipam=(IpamConfig("10.96.0.0/24", "10.96.0.1"),),
            ipv6=False,
            internal=False,
            options={},
            labels={},
            kernel_name=None,
        )
        driver.create_network(ctx, network)
        bridge = f"kn-{network.id[:12]}"  # made by the plugin, from the same network id
        assert bridge in host_links(lab)
        boxes = [lab.name("a"), lab.name("b")]
        endpoints = []
        for number, box in enumerate(boxes):
            create_ns(box)
            endpoint = Endpoint(
                ip=f"10.96.0.{number + 2}",
                ipv6=None,
                mac=links.random_mac(),
                ifname="eth0",
                gateway=None,
                id=secrets.token_hex(32),
                network_id=network.id,
                sandbox=box,
            )
            driver.create_endpoint(ctx, network, endpoint, None)
            kept = driver.join(ctx, network, endpoint, netns_path(box))
            endpoints.append(dataclasses.replace(endpoint, driver_data=dict(kept or {})))
        a, b = endpoints
        view = sandbox_view(boxes[0])
        assert view["links"]["eth0"] == (a.mac, ctx.owner.alias(network.id, a.id))
        assert view["addresses"]["10.96.0.2/24"] == "eth0"
        # The plugin's Gateway: offered to the Host, which picks the sandbox's default route.
        assert driver.default_routes(network, a) == ("10.96.0.1", None)
        assert a.driver_data["src_name"] not in host_links(lab)  # moved into the sandbox
        assert ping(boxes[0], "10.96.0.3")

        driver.leave(ctx, network, a, netns_path(boxes[0]))
        assert "eth0" not in sandbox_view(boxes[0])["links"]
        assert a.driver_data["src_name"] in host_links(lab)  # given back, as dockerd does
        driver.delete_endpoint(ctx, network, a)
        assert not {f"kn-c{a.id[:11]}", f"kn-v{a.id[:11]}"} & host_links(lab)
        driver.leave(ctx, network, b, netns_path(boxes[1]))
        driver.delete_endpoint(ctx, network, b)
        driver.delete_network(ctx, network)
        assert bridge not in host_links(lab)


def test_an_independent_plugin_as_network_driver(
    lab: Lab, host: keelnet.Host, mini: MiniPlugin
) -> None:
    name = mini.socket_path.stem
    network = host.create_network("mini", driver=name, subnet="10.98.0.0/24", options={"k": "v"})
    assert mini.networks[network.id]["options"] == {
        "com.docker.network.generic": {"k": "v"},
        "com.docker.network.enable_ipv6": False,
    }
    a, b = (host.create_sandbox(lab.name(n)).name for n in ("a", "b"))
    ea, eb = host.connect("mini", a), host.connect("mini", b)
    view = sandbox_view(a)
    assert view["addresses"][f"{ea.ip}/24"] == "eth0"
    assert view["links"]["eth0"][0] == ea.mac  # keelnet's MAC, which the plugin kept
    assert {
        ("default/0", "10.98.0.1", "eth0"),
        (ROUTE_VIA, "10.98.0.1", "eth0"),
        (ROUTE_ON_LINK, None, "eth0"),
    } <= view["routes"]
    assert ping(a, str(eb.ip))
    host.disconnect("mini", a)
    host.remove_sandbox(b)
    host.remove_network("mini")
    assert mini.methods() == [
        "Plugin.Activate",
        "NetworkDriver.GetCapabilities",
        "NetworkDriver.CreateNetwork",
        *["NetworkDriver.CreateEndpoint", "NetworkDriver.Join"] * 2,
        *["NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"] * 2,
        "NetworkDriver.DeleteNetwork",
    ]
    assert mini.networks == {} and mini.endpoints == {}
    assert not [n for n in host_links(lab) if n.startswith(("kn-mb", "kn-mh", "kn-mc"))]


def test_an_independent_plugin_as_ipam_driver(
    lab: Lab, host: keelnet.Host, mini: MiniPlugin
) -> None:
    name = mini.socket_path.stem
    network = host.create_network("ipam", ipam_driver=name, ipam_options={"flavour": "mini"})
    (config,) = network.ipam
    assert (config.subnet, config.gateway, config.pool_id) == (
        "10.97.0.0/24",
        "10.97.0.1",
        "mini/10.97.0.0/24",
    )
    box = host.create_sandbox(lab.name("box")).name
    endpoint = host.connect("ipam", box)
    assert endpoint.ip == "10.97.0.2"
    assert ping(box, "10.97.0.1")  # keelnet's bridge holds the gateway the plugin gave
    host.disconnect("ipam", box)
    host.remove_network("ipam")
    assert mini.requests == [
        ("Plugin.Activate", None),
        ("IpamDriver.GetDefaultAddressSpaces", None),
        (
            "IpamDriver.RequestPool",
            {
                "AddressSpace": "mini-local",
                "Pool": "",
                "SubPool": "",
                "Options": {"flavour": "mini"},
                "V6": False,
            },
        ),
        (
            "IpamDriver.RequestAddress",
            {
                "PoolID": "mini/10.97.0.0/24",
                "Address": "",
                "Options": {"RequestAddressType": "com.docker.network.gateway"},
            },
        ),
        (
            "IpamDriver.RequestAddress",
            {"PoolID": "mini/10.97.0.0/24", "Address": "", "Options": {"flavour": "mini"}},
        ),
        ("IpamDriver.ReleaseAddress", {"PoolID": "mini/10.97.0.0/24", "Address": "10.97.0.2"}),
        ("IpamDriver.ReleaseAddress", {"PoolID": "mini/10.97.0.0/24", "Address": "10.97.0.1"}),
        ("IpamDriver.ReleasePool", {"PoolID": "mini/10.97.0.0/24"}),
    ]
    assert mini.pools == {}


def test_plugin_errors_reach_the_caller_and_nothing_is_left(
    lab: Lab, host: keelnet.Host, mini: MiniPlugin
) -> None:
    name = mini.socket_path.stem
    links_before = host_links(lab)
    mini.answers["NetworkDriver.CreateNetwork"] = (200, {"Err": "mini refuses the network"})
    with pytest.raises(PluginError, match="CreateNetwork: mini refuses the network"):
        host.create_network("x", driver=name, subnet="10.98.1.0/24")
    assert host.networks() == []
    del mini.answers["NetworkDriver.CreateNetwork"]
    host.create_network("x", driver=name, subnet="10.98.1.0/24")
    box = host.create_sandbox(lab.name("box")).name

    cases: list[tuple[str, tuple[int, Any], type[Exception], str]] = [
        (
            "NetworkDriver.Join",
            (200, {"InterfaceName": {"SrcName": "kn-nosuch", "DstPrefix": "eth"}}),
            KernelError,
            "kn-nosuch",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            (200, {"Interface": {"Address": "10.98.1.99/24"}}),
            PluginError,
            "modified the endpoint's interface",
        ),
        ("NetworkDriver.Join", (500, b"a raw failure"), PluginError, "Join: a raw failure"),
    ]
    for method, answer, error, message in cases:
        mini.answers[method] = answer
        before = len(mini.requests)
        with pytest.raises(error, match=message):
            host.connect("x", box)
        del mini.answers[method]
        sent = [m for m, _ in mini.requests[before:]]
        assert sent[-1] == "NetworkDriver.DeleteEndpoint", sent  # rolled back at the plugin
        assert host.endpoints("x") == []
        assert list(sandbox_view(box)["links"]) == ["lo"]
    host.remove_network("x")
    host.remove_sandbox(box)
    assert host_links(lab) == links_before
    assert mini.endpoints == {} and mini.networks == {}


def test_unknown_and_unreachable_plugins(
    lab: Lab,
    host: keelnet.Host,
    plugin_dirs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(UnknownDriver, match=f"{plugin_dirs}/nosuch.sock"):
        host.create_network("x", driver="nosuch")
    import socket

    dead = plugin_dirs / "dead.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(dead))  # a socket nobody accepts on: a plugin that died
    monkeypatch.setattr(client, "RETRY_SECONDS", 0.5)
    with pytest.raises(PluginUnavailable, match="does not answer"):
        host.create_network("x", driver="dead")
    assert host.networks() == []


def _shape(value: Any) -> Any:
    """The keys and JSON types of a request, recursively (values left out)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_keelnet_asks_as_dockerd_asked(lab: Lab, host: keelnet.Host, mini: MiniPlugin) -> None:
    """Each request keelnet sends has the shape of the same request from dockerd 20.10
    (taken from a recorded session); the options maps are compared by their type only."""
    recorded: dict[str, list[Any]] = {}
    for line in RECORDED.read_text().splitlines():
        entry = json.loads(line)
        recorded.setdefault(entry["method"], []).append(_shape(entry["request"]))
    name = mini.socket_path.stem
    host.create_network("shape", driver=name, subnet="10.98.2.0/24", ipv6=True)
    box = host.create_sandbox(lab.name("box")).name
    host.connect("shape", box)
    host.disconnect("shape", box)
    host.remove_network("shape")
    for method, body in mini.requests:
        if method.startswith("NetworkDriver."):
            shape = _shape(body)
            for options in ("Options",):
                if isinstance(shape, dict) and options in shape:
                    shape[options] = "dict"
            expected = []
            for known in recorded[method]:
                known = dict(known) if isinstance(known, dict) else known
                if isinstance(known, dict) and "Options" in known:
                    known["Options"] = "dict"
                expected.append(known)
            assert shape in expected, (method, shape, expected[:1])
