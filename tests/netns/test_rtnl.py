"""The hand-encoded rtnetlink requests, checked against pyroute2's view of the kernel."""

from __future__ import annotations

import os
import socket

import pytest
from netlab import Lab

from keelnet.kernel import rtnl
from keelnet.kernel.namespaces import iproute, netns_path


def test_veth_addresses_and_routes(lab: Lab) -> None:
    host_path, peer_path = netns_path(lab.host), netns_path(lab.outside)
    with rtnl.Rtnl(host_path) as host, rtnl.Rtnl(peer_path) as peer:
        bridge_index = None
        with iproute(host_path) as ipr:
            ipr.link("add", ifname="kn-tbr", kind="bridge")
            bridge_index = ipr.link_lookup(ifname="kn-tbr")[0]
        fd = os.open(peer_path, os.O_RDONLY)
        try:
            host.run(
                [
                    rtnl.add_veth(
                        "kn-tv",
                        master=bridge_index,
                        peer_ifname="eth9",
                        peer_netns_fd=fd,
                        peer_mac="02:6b:6e:00:00:09",
                        mtu=1400,
                        group=0x6B6E0001,
                    )
                ]
            )
        finally:
            os.close(fd)
        # The creating request marks both ends (the group); it cannot set an alias.
        with iproute(host_path) as ipr:
            created = ipr.link("get", ifname="kn-tv")[0]
            assert created.get("group") == 0x6B6E0001 and created.get("ifalias") is None
        with iproute(peer_path) as ipr:
            assert ipr.link("get", ifname="eth9")[0].get("group") == 0x6B6E0001
        host.run([rtnl.set_link("kn-tv", alias="keelnet:test", up=True)])
        index = peer.link_index("eth9")
        assert index is not None and peer.link_index("nope") is None
        peer.run(
            [
                rtnl.set_link("eth9", up=True),
                rtnl.add_address(index, "203.0.113.9", 24),
                rtnl.add_address(index, "2001:db8::9", 64),
            ]
        )
        peer.run([rtnl.add_default_route(index, "203.0.113.1")])
        peer.run([rtnl.add_default_route(index, None, version=6)])
        with pytest.raises(rtnl.RtnlError) as raised:
            peer.run([rtnl.add_address(index, "203.0.113.9", 24)])
        assert raised.value.errno == 17  # EEXIST, with the errno kept

    with iproute(host_path) as ipr:
        veth = ipr.link("get", ifname="kn-tv")[0]
        assert veth.get("master") == bridge_index and veth.get("ifalias") == "keelnet:test"
        assert veth.get("mtu") == 1400
    with iproute(peer_path) as ipr:
        link = ipr.link("get", index=index)[0]
        assert link.get("address") == "02:6b:6e:00:00:09" and link.get("mtu") == 1400
        addresses = {(a.get("address"), a["prefixlen"]) for a in ipr.addr("dump", index=index)}
        assert {("203.0.113.9", 24), ("2001:db8::9", 64)} <= addresses
        v4 = [r for r in ipr.route("dump", family=socket.AF_INET) if r["dst_len"] == 0]
        assert [r.get("gateway") for r in v4] == ["203.0.113.1"]
        v6 = [r for r in ipr.route("dump", family=socket.AF_INET6) if r["dst_len"] == 0]
        assert v6 and v6[0].get("gateway") is None and v6[0].get("oif") == index
