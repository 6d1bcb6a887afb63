"""An etcd for the plugin's overlay networks, and the underlay the root namespace reaches
it (and other test hosts' VTEPs) by.

The plugin runs in dockerd's namespace, the root one. The etcd runs in a namespace of its
own on an underlay segment in 203.0.113.0/24 (TEST-NET-3), which the root namespace joins
by one veth leg with the address 203.0.113.1: the plugin host's VTEP. Test hosts join the
segment as the overlay tests' do (`clusterlab`). Everything goes at the end, also on
failure: the leg, etcd, and the namespaces named `<prefix>-...`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from clusterlab import EtcdCluster, Segment
from netlab import remove_prefix
from pyroute2 import IPRoute

from keelnet.kernel import links
from keelnet.kernel.namespaces import iproute, netns_path, write_sysctl

UNDERLAY = "203.0.113."
PLUGIN_VTEP = f"{UNDERLAY}1"


def why_no_underlay() -> str | None:
    """None when the root namespace routes nothing in the underlay's subnet."""
    ours = ipaddress.ip_network(f"{UNDERLAY}0/24")
    with IPRoute() as ipr:
        for route in ipr.route("dump", family=socket.AF_INET):
            if not route["dst_len"]:
                continue
            routed = ipaddress.ip_network(f"{route.get('dst')}/{route['dst_len']}", strict=False)
            if routed.overlaps(ours):
                return f"this machine routes {routed}, which the overlay underlay {ours} touches"
    return None


@contextlib.contextmanager
def _root_leg(segment: Segment, ifname: str) -> Iterator[None]:
    """A veth from the segment's bridge into the root namespace, as `ifname` with the
    plugin host's underlay address."""
    fd = links.open_netns_fd(links.OWN_NETNS)
    try:
        with iproute(netns_path(segment.netns)) as ipr:
            port = "root"
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": ifname, "net_ns_fd": fd})
            bridge = ipr.link_lookup(ifname="br0")[0]
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=bridge, state="up")
    finally:
        os.close(fd)
    try:
        write_sysctl(None, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=index, address=PLUGIN_VTEP, prefixlen=24)
            ipr.link("set", index=index, state="up")
        yield
    finally:
        with IPRoute() as ipr:
            links.delete_link(ipr, ifname)


@contextlib.contextmanager
def etcd_beside_dockerd(prefix: str, root: Path) -> Iterator[EtcdCluster]:
    """A one-member etcd on an underlay segment the root namespace joins (its leg
    `<prefix>u`); namespaces `<prefix>-sw`, `<prefix>-etcd0`, and the test's own ones
    named `<prefix>-...`, go at the end."""
    segment = Segment(prefix, "sw", UNDERLAY)
    etcd = EtcdCluster(prefix, segment, root / "etcd")
    try:
        segment.create()
        etcd.start()
        with _root_leg(segment, f"{prefix}u"):
            yield etcd
    finally:
        etcd.stop()
        remove_prefix(f"{prefix}-")
