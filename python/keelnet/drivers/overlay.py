"""overlay: one L2 network across the hosts of a cluster store, over VXLAN.

The network itself is global (in etcd, see `keelnet.store.etcd`); a host builds its
part of it when its first sandbox joins and removes it when its last one leaves.

`dataplane=kernel` is Docker's layout: per network a namespace `<host>-ov-<id10>`
holding a Linux bridge with the gateway address and a vxlan device (created in the host
namespace, where the underlay is, then moved in; its UDP socket stays with the
underlay); each sandbox is a veth pair, one end on that bridge. Remote endpoints are
programmed statically, never learnt or flooded: a bridge FDB entry MAC → remote VTEP
and a permanent neighbour entry IP → MAC on the vxlan device, whose proxy-ARP flag
answers the sandboxes' ARP from that table.

`dataplane=userspace` is keelnet's switch: one per host for all its userspace overlay
networks (one VTEP on the host's underlay address, a VNI per network), a TAP per
sandbox, remote endpoints as static FDB entries with their IPs for ARP suppression.
`auto` takes the kernel where it has the vxlan module. Both speak standard VXLAN, so
kernel and userspace hosts share a network.

Port security (`_port_security`, on unless `-o port_security=false`), as on bridge
networks: each sandbox sends only from its MAC and address (nftables bridge rules in the
network's namespace, a check per TAP in the switch). Either way every endpoint's MAC,
local or remote, is a static entry that no frame moves (on the kernel bridge a sticky
one: a learning port moves plain static entries) and no peer's record takes a local
endpoint's MAC or IP (`keelnet.cluster` ignores it); the vxlan port learns nothing, and
under port security neither do the sandboxes' ports. The gateway's MAC (the kernel
bridge's own) is never learnt anywhere. Reconcile reloads the guard of a namespace whose
ruleset went (`restore_guard`).

MTU inside: 1450 (the underlay's 1500 less 50 bytes of VXLAN); MACs are derived from
the IPv4 address (02:42:a.b.c.d) as Docker does, so remote peers need no ARP.

Docker's containers (keelnet's plugin) get their endpoints handed over: the veth's other
end, or the TAP, waits in the host's namespace, marked, for dockerd to move and set up.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from keelnet.drivers import _port_security, _userspace, _veth
from keelnet.drivers.base import Driver, HostContext, NetworkRequest
from keelnet.errors import (
    Conflict,
    DataPlaneUnavailable,
    InvalidOption,
    InvalidRequest,
    KernelError,
    NotFound,
)
from keelnet.kernel import links, nftables, nftables_guard, rtnl
from keelnet.kernel.namespaces import (
    NETNS_RUN_DIR,
    bridges_skip_iptables,
    create_named,
    iproute,
    netns_path,
    remove_named,
    write_sysctl,
)
from keelnet.model import Endpoint, Network, RemoteEndpoint
from keelnet.store.etcd import VNI_OPTION, vni_of

MTU = "com.docker.network.driver.mtu"
VXLAN_PORT = "vxlan_port"
DEFAULT_VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # inner Ethernet 14 + outer IPv4 20 + UDP 8 + VXLAN 8
ARP_RETRANS_MS = "50"


def vxlan_port(options: Mapping[str, str]) -> int:
    value = options.get(VXLAN_PORT, str(DEFAULT_VXLAN_PORT))
    if not value.isdigit() or not 1024 <= int(value) <= 49151:
        raise InvalidOption(f"option {VXLAN_PORT}: {value!r} is not a UDP port in 1024-49151")
    return int(value)


def pinned_vni(options: Mapping[str, str]) -> int | None:
    """The VNI `com.docker.network.driver.overlay.vxlanid_list` asks for, if any."""
    value = options.get(VNI_OPTION)
    if value is None:
        return None
    if "," in value:
        raise InvalidOption(
            f"option {VNI_OPTION}: one VNI per subnet, and keelnet's overlay has one"
        )
    if not value.strip().isdigit() or not 1 <= int(value) <= (1 << 24) - 1:
        raise InvalidOption(f"option {VNI_OPTION}: {value!r} is not a VNI in 1-16777215")
    return int(value)


def inner_mtu(options: Mapping[str, str]) -> int:
    value = options.get(MTU)
    if value in (None, "", "0"):
        return 1500 - VXLAN_OVERHEAD
    assert value is not None
    if not value.isdigit() or not 68 + VXLAN_OVERHEAD <= int(value) <= 65535:
        raise InvalidOption(f"option {MTU}: {value!r} is not an underlay MTU of 118-65535")
    return int(value) - VXLAN_OVERHEAD


def mac_for(ip: str) -> str:
    """Docker's overlay MAC: 02:42 followed by the four bytes of the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def overlay_netns(ctx: HostContext, network: Network) -> str:
    """The namespace holding this host's part of the network (kernel data plane)."""
    return _netns_prefix(ctx) + network.id[:10]


def _netns_prefix(ctx: HostContext) -> str:
    """`<host netns name>-ov-`: unique per host namespace on the machine."""
    host = Path(ctx.netns_path).name if ctx.netns_path else "kn"
    if ctx.netns_path and not ctx.netns_path.startswith(str(NETNS_RUN_DIR)):
        host = "kn"  # a /proc/PID/ns/net host: no name to lend
    return f"{host}-ov-"


class OverlayPlane(_userspace.SwitchPlane):
    """The host's userspace overlay switch: one VTEP, one VNI per network."""

    def __init__(self, ctx: HostContext, vtep: str, port: int) -> None:
        self.vtep = vtep
        self.port = port
        self._endpoints: dict[str, set[str]] = {}  # network id -> local endpoint ids
        self._behind: dict[tuple[int, str], set[str]] = {}  # (vni, vtep) -> MACs
        # Static entries only: no MAC learnt from tunnels, no VXLAN from unknown VTEPs.
        super().__init__(
            ctx,
            lambda switch: switch.add_vtep(vtep, port=port),
            arp_suppression=True,
            learn_remote=False,
            learn_peers=False,
        )

    def attach(self, network_id: str, endpoint_id: str) -> None:
        self._endpoints.setdefault(network_id, set()).add(endpoint_id)

    def detach(self, network_id: str, endpoint_id: str) -> bool:
        """Forget a local endpoint; True when it was the network's last one here."""
        local = self._endpoints.get(network_id, set())
        local.discard(endpoint_id)
        if local:
            return False
        self._endpoints.pop(network_id, None)
        return True

    def release(self, vni: int) -> None:
        """Forget every peer of the VNI (its network is gone from this host): a network
        that gets the VNI next starts with none of them."""
        for key in [key for key in self._behind if key[0] == vni]:
            del self._behind[key]
            with contextlib.suppress(NotFound):
                self.switch.remove_peer(vni, key[1])

    def add_peer(self, vni: int, peer: RemoteEndpoint) -> None:
        self.switch.add_peer(vni, peer.vtep, mac=peer.mac, ip=peer.ip)
        self._behind.setdefault((vni, peer.vtep), set()).add(peer.mac)

    def remove_peer(self, vni: int, peer: RemoteEndpoint) -> None:
        macs = self._behind.get((vni, peer.vtep), set())
        macs.discard(peer.mac)
        with contextlib.suppress(NotFound):  # already gone: removal is idempotent
            if macs:
                self.switch.remove_peer(vni, peer.vtep, peer.mac)
            else:  # the last MAC behind that VTEP: it leaves the VNI's flood list too
                self._behind.pop((vni, peer.vtep), None)
                self.switch.remove_peer(vni, peer.vtep)


class OverlayDriver(Driver):
    name = "overlay"
    scope = "global"
    options = frozenset({VNI_OPTION, VXLAN_PORT, MTU, _port_security.OPTION})
    dataplanes = ("kernel", "userspace")
    gateway_route = False  # sandboxes leave through kn-gwbridge, as Docker's docker_gwbridge
    hands_over = True  # Docker's containers: their veth end or TAP waits in the host

    def validate(self, ctx: HostContext, request: NetworkRequest) -> None:
        super().validate(ctx, request)
        pinned_vni(request.options)
        vxlan_port(request.options)
        inner_mtu(request.options)
        _port_security.enabled(request.options)
        if request.ipv6:
            raise InvalidRequest("overlay networks are IPv4-only in keelnet for now")
        if request.internal:
            raise InvalidRequest("internal overlay networks are not supported yet")

    def choose_dataplane(
        self, ctx: HostContext, requested: str, options: Mapping[str, str] | None = None
    ) -> str:
        """Kept as asked: with `auto` each host picks its own (`local_dataplane`), so
        kernel and userspace hosts share one network."""
        super().choose_dataplane(ctx, requested, options)
        if requested == "auto":
            return requested
        if requested == "kernel":
            links.require_kind(
                ctx.netns_path,
                "vxlan",
                "vxlan",
                "overlay with dataplane=kernel",
                "use dataplane=userspace or auto",
            )
        return requested

    def local_dataplane(self, ctx: HostContext, network: Network) -> str:
        """The data plane this host runs for the network: the one the network names, or
        for `auto` this host's preference (`Host(dataplane=...)`), else the kernel where
        it has the vxlan module."""
        if network.dataplane != "auto":
            return network.dataplane
        if ctx.dataplane in ("kernel", "userspace"):
            return ctx.dataplane
        return "kernel" if links.kind_supported("vxlan", ctx.netns_path) else "userspace"

    def endpoint_mac(
        self, ctx: HostContext, network: Network, requested: str | None, ip: str | None = None
    ) -> str:
        if requested:
            return requested.lower()
        if ip is None:
            raise KernelError("an overlay endpoint needs an IPv4 address for its MAC")
        return mac_for(ip)

    # --- the network: nothing on this host until a sandbox joins -------------------------

    def create_network(self, ctx: HostContext, network: Network) -> None:
        return

    def has_local_part(self, ctx: HostContext, network: Network) -> bool:
        """Whether this host runs a part of the network (its namespace, or its VNI on the
        host's switch)."""
        if self.local_dataplane(ctx, network) == "userspace":
            return _userspace.planes_of(ctx).get(network.id) is not None
        return Path(netns_path(overlay_netns(ctx, network))).exists()

    def delete_network(self, ctx: HostContext, network: Network) -> None:
        """Remove this host's part (idempotent)."""
        if self.local_dataplane(ctx, network) == "userspace":
            _close_userspace(ctx, network)
        else:
            _remove_netns(overlay_netns(ctx, network))

    def _vtep(self, ctx: HostContext) -> str:
        if ctx.cluster is None:
            raise DataPlaneUnavailable(
                "overlay endpoints need this host to be a cluster member: a Host with a store "
                "(keelnet.Host(store=...)) or a running `keelnet --store ... agent`"
            )
        return ctx.cluster.vtep

    # --- kernel plumbing -----------------------------------------------------------------

    def _ensure_kernel(self, ctx: HostContext, network: Network) -> str:
        """The network's namespace, built (and the known peers programmed) if missing."""
        name = overlay_netns(ctx, network)
        path = netns_path(name)
        if Path(path).exists():
            return path
        vni, mtu = vni_of(network), inner_mtu(network.options)
        bridge, vxlan = f"kn-br{vni:06x}", f"kn-vx{vni:06x}"
        nftables.close(path)  # one left for a namespace once here would reach that one
        create_named(path)
        try:
            with iproute(path) as ipr:
                ipr.link("set", index=1, state="up")
                ipr.link(
                    "add",
                    ifname=bridge,
                    kind="bridge",
                    mtu=mtu,
                    address=links.random_mac(),
                    ifalias=ctx.owner.alias(network.id),
                    **ctx.owner.link_attributes(),
                )
                bridge_index = links.link_index(ipr, bridge)
                assert bridge_index is not None
                for config in network.ipam:
                    if config.gateway:
                        links.add_address(ipr, bridge_index, config.gateway, config.prefix_length)
                ipr.link("set", index=bridge_index, state="up")
            write_sysctl(path, f"net/ipv6/conf/{bridge}/disable_ipv6", "1")
            # Nothing filters in this namespace: spare its frames br_netfilter's hooks.
            bridges_skip_iptables(path)
            fd = links.open_netns_fd(path)
            try:
                # Made where the underlay is: its UDP socket stays there when it moves.
                ctx.ipr.link(
                    "add",
                    ifname=vxlan,
                    kind="vxlan",
                    vxlan_id=vni,
                    vxlan_port=vxlan_port(network.options),
                    vxlan_learning=0,
                    vxlan_proxy=1,
                    mtu=mtu,
                    ifalias=ctx.owner.alias(network.id),
                    **ctx.owner.link_attributes(),
                )
                index = links.link_index(ctx.ipr, vxlan)
                try:
                    ctx.ipr.link("set", index=index, net_ns_fd=fd)
                except NetlinkError:
                    links.delete_link(ctx.ipr, vxlan)
                    raise
            finally:
                links.close_fd(fd)
            with iproute(path) as ipr:
                index = links.link_index(ipr, vxlan)
                if index is None:
                    raise KernelError(f"{vxlan} did not arrive in {name}")
                ipr.link("set", index=index, master=bridge_index, state="up")
            # The vxlan port learns nothing: remote MACs are static entries on it.
            port = rtnl.set_bridge_port(vxlan, learning=False, unicast_flood=True, isolated=False)
            with rtnl.Rtnl(path) as overlay:
                overlay.run([port])
            if _port_security.enabled(network.options):  # before any sandbox's port
                rules = nftables_guard.rules(nftables_guard.BRIDGE)
                nftables.apply(path, "\n".join(rules) + "\n")
            peers = ctx.cluster.peers(network.id) if ctx.cluster else []
            _program_kernel_peers(path, vxlan, peers, add=True)
        except NetlinkError as exc:
            _remove_netns(name)
            if exc.code == errno.EEXIST:
                raise Conflict(
                    f"VXLAN {vni} already has a device on this host (another network or "
                    "process uses it)"
                ) from exc
            raise links.netlink_error(f"building overlay {network.name}", exc) from exc
        except BaseException:
            _remove_netns(name)
            raise
        return path

    # --- endpoints -----------------------------------------------------------------------

    def create_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        vtep = self._vtep(ctx)
        cluster = ctx.cluster
        assert cluster is not None
        with cluster.lock:  # no peer event between building and replaying
            if self.local_dataplane(ctx, network) == "userspace":
                plane = self._ensure_userspace(ctx, network, vtep)
                _userspace.add_sandbox_tap(
                    ctx,
                    plane.switch,
                    endpoint,
                    sandbox_path,
                    mtu=inner_mtu(network.options),
                    isolation="open",
                    port_security=_port_security.enabled(network.options),
                    vni=vni_of(network),
                )
                plane.attach(network.id, endpoint.id)
                return
            path = self._ensure_kernel(ctx, network)
        bridge = f"kn-br{vni_of(network):06x}"
        host_ifname = links.veth_host_end(endpoint.id)
        # The sandbox's end goes into it, or (handed over) waits in the host's namespace.
        fd = links.open_netns_fd(sandbox_path or ctx.netns_path or links.OWN_NETNS)
        try:
            with rtnl.Rtnl(path) as overlay:
                bridge_index = overlay.link_index(bridge)
                if bridge_index is None:
                    raise KernelError(f"bridge {bridge} of {network.name} is missing")
                overlay.run(
                    [
                        rtnl.add_veth(
                            host_ifname,
                            master=bridge_index,
                            peer_ifname=endpoint.ifname,
                            peer_netns_fd=fd,
                            peer_mac=endpoint.mac,
                            mtu=inner_mtu(network.options),
                            group=ctx.owner.group,
                        ),
                        rtnl.set_link(
                            host_ifname, alias=ctx.owner.alias(network.id, endpoint.id), up=True
                        ),
                    ]
                )
            if sandbox_path is None:  # marked as the endpoint's, down, for the caller
                alias = ctx.owner.alias(network.id, endpoint.id)
                ctx.rtnl.run([rtnl.set_link(endpoint.ifname, alias=alias)])
        except rtnl.RtnlError as exc:
            with contextlib.suppress(KernelError):
                self._remove_kernel_endpoint(ctx, network, endpoint)
            if exc.errno == errno.EEXIST:
                raise Conflict(f"interface {endpoint.ifname} already exists") from exc
            raise KernelError(f"creating the overlay veth pair: {exc.strerror}") from exc
        finally:
            links.close_fd(fd)
        try:
            self._guard_port(network, endpoint, path)
        except BaseException:
            with contextlib.suppress(KernelError):
                self._remove_kernel_endpoint(ctx, network, endpoint)
            raise

    def _guard_port(self, network: Network, endpoint: Endpoint, path: str) -> None:
        """The veth's bridge port, before the sandbox's end comes up (at join): its MAC a
        sticky static entry (no frame from another port, the vxlan one included, moves
        it); under port security it learns nothing, gets no unknown unicast and nftables
        checks what it brings."""
        ifname = links.veth_host_end(endpoint.id)
        guarded = _port_security.enabled(network.options)
        try:
            with rtnl.Rtnl(path) as overlay:
                index = overlay.link_index(ifname)
                if index is None:
                    raise KernelError(f"{ifname} vanished after creation")
                overlay.run(
                    [
                        rtnl.set_bridge_port(
                            ifname, learning=not guarded, unicast_flood=not guarded, isolated=False
                        ),
                        rtnl.add_static_fdb(index, endpoint.mac),
                    ]
                )
            # A bridge port needs no addresses of its own (nor the DAD that comes with them).
            write_sysctl(path, f"net/ipv6/conf/{ifname}/disable_ipv6", "1")
        except OSError as exc:  # RtnlError is one
            raise KernelError(f"setting up {ifname}: {exc.strerror or exc}") from exc
        if guarded:
            port = _port_security.guarded_port(endpoint, ifname)
            nftables.apply(path, nftables_guard.add_port(nftables_guard.BRIDGE, port))

    def restore_guard(self, ctx: HostContext, network: Network, endpoints: list[Endpoint]) -> None:
        """Reload the port security of this host's kernel part of the network, guarding
        exactly `endpoints`' ports (reconcile: the namespace's ruleset flushed by hand, or
        a crash between a veth and its guard). Nothing where the part is not here."""
        if self.local_dataplane(ctx, network) != "kernel":
            return
        if not _port_security.enabled(network.options):
            return
        path = netns_path(overlay_netns(ctx, network))
        if not Path(path).exists():
            return
        ports = [_port_security.guarded_port(e, links.veth_host_end(e.id)) for e in endpoints]
        nftables.apply(path, nftables_guard.sync(nftables_guard.BRIDGE, ports))

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        _veth.configure_sandbox_interface(
            ctx.owner,
            network,
            endpoint,
            sandbox_path,
            eui64_link_local=_port_security.enabled(network.options),
        )
        # A peer that connected a moment ago may not be in this host's tables yet when the
        # sandbox first asks for it (the watch is milliseconds behind): ask again soon,
        # not after the kernel's default second.
        write_sysctl(
            sandbox_path, f"net/ipv4/neigh/{endpoint.ifname}/retrans_time_ms", ARP_RETRANS_MS
        )

    def leave(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str | None
    ) -> None:
        if self.local_dataplane(ctx, network) == "userspace":
            plane = _userspace.planes_of(ctx).get(network.id)
            if isinstance(plane, OverlayPlane):
                _userspace.remove_sandbox_tap(plane.switch, endpoint)
            _veth.remove_sandbox_interface(endpoint, sandbox_path)

    def delete_endpoint(self, ctx: HostContext, network: Network, endpoint: Endpoint) -> None:
        if self.local_dataplane(ctx, network) == "userspace":
            plane = _userspace.planes_of(ctx).get(network.id)
            if isinstance(plane, OverlayPlane) and plane.detach(network.id, endpoint.id):
                _close_userspace(ctx, network)  # its last sandbox here: it goes
            return
        self._remove_kernel_endpoint(ctx, network, endpoint)

    def _remove_kernel_endpoint(
        self, ctx: HostContext, network: Network, endpoint: Endpoint
    ) -> None:
        """Remove the endpoint's veth and guard, or with the host's last sandbox on the
        network its whole part (the guard goes with the namespace); a namespace already
        gone is fine, and nothing is asked of it then."""
        name = overlay_netns(ctx, network)
        path = netns_path(name)
        if not Path(path).exists():
            _remove_netns(name)  # removed by someone else: let go of it here too
            return
        try:
            with iproute(path) as ipr:
                links.delete_link(ipr, links.veth_host_end(endpoint.id))
                left = [
                    link for link in ipr.link("dump") if link.get(("linkinfo", "kind")) == "veth"
                ]
            if not left:  # the host's last sandbox on it: its part goes
                _remove_netns(name)
            elif _port_security.enabled(network.options):
                port = _port_security.guarded_port(endpoint, links.veth_host_end(endpoint.id))
                nftables.apply(path, nftables_guard.remove_port(nftables_guard.BRIDGE, port))
        except FileNotFoundError:
            _remove_netns(name)  # it went meanwhile

    # --- userspace plumbing --------------------------------------------------------------

    def _ensure_userspace(self, ctx: HostContext, network: Network, vtep: str) -> OverlayPlane:
        planes = _userspace.planes_of(ctx)
        mine = planes.get(network.id)
        if isinstance(mine, OverlayPlane):
            return mine
        port = vxlan_port(network.options)
        shared = next((p for p in planes.running() if isinstance(p, OverlayPlane)), None)
        if shared is not None and shared.port != port:
            raise Conflict(
                f"this host's userspace VTEP uses UDP port {shared.port}; "
                f"network {network.name} wants {port}"
            )
        if shared is None:
            shared = planes.add_new(network.id, OverlayPlane(ctx, vtep, port))
        else:
            planes.add(network.id, shared)
        vni = vni_of(network)
        for peer in ctx.cluster.peers(network.id) if ctx.cluster else []:
            shared.add_peer(vni, peer)
        return shared

    def remove_unused(self, ctx: HostContext, in_use: set[str]) -> int:
        """Remove this host's kernel parts of global networks it has no endpoint on (what a
        process that died between a last disconnect and the removal left); returns how
        many went."""
        mine = _netns_prefix(ctx)
        wanted = {network_id[:10] for network_id in in_use}
        removed = 0
        for name in os.listdir(NETNS_RUN_DIR):
            if name.startswith(mine) and name[len(mine) :] not in wanted:
                _remove_netns(name)
                removed += 1
        return removed

    # --- peers (called by the cluster watch) ---------------------------------------------

    def add_peer(self, ctx: HostContext, network: Network, peer: RemoteEndpoint) -> None:
        self._peer(ctx, network, peer, add=True)

    def remove_peer(self, ctx: HostContext, network: Network, peer: RemoteEndpoint) -> None:
        self._peer(ctx, network, peer, add=False)

    def _peer(self, ctx: HostContext, network: Network, peer: RemoteEndpoint, *, add: bool) -> None:
        """Program one remote endpoint, where this host has a part of the network (else
        it is replayed when that part is built)."""
        if self.local_dataplane(ctx, network) == "userspace":
            plane = _userspace.planes_of(ctx).get(network.id)
            if isinstance(plane, OverlayPlane):
                (plane.add_peer if add else plane.remove_peer)(vni_of(network), peer)
            return
        path = netns_path(overlay_netns(ctx, network))
        if Path(path).exists():
            _program_kernel_peers(path, f"kn-vx{vni_of(network):06x}", [peer], add=add)


def _program_kernel_peers(path: str, vxlan: str, peers: list[RemoteEndpoint], *, add: bool) -> None:
    """Permanent neighbour entries IP → MAC and FDB entries MAC → remote VTEP on the
    vxlan device, and the bridge's static, sticky entry MAC → vxlan port, which a
    sandbox's frames never move and which never takes a local endpoint's MAC (or their
    removal; entries already gone are fine). Plain rtnetlink: this runs on the cluster
    watch's thread, beside the Host's own pyroute2 use."""
    try:
        with rtnl.Rtnl(path) as overlay:
            index = overlay.link_index(vxlan)
            if index is None:
                return  # the network's part is being removed here
            for peer in peers:
                requests = [
                    rtnl.neighbour(index, peer.ip, peer.mac, add=add),
                    rtnl.vxlan_fdb(index, peer.mac, peer.vtep, add=add),
                ]
                if add:
                    overlay.run(requests)
                    try:  # EEXIST: there already, or a local endpoint's, which stays
                        overlay.run([rtnl.add_static_fdb(index, peer.mac, exclusive=True)])
                    except rtnl.RtnlError as exc:
                        if exc.errno != errno.EEXIST:
                            raise
                    continue
                for request in [*requests, rtnl.delete_fdb(index, peer.mac)]:
                    try:
                        overlay.run([request])
                    except rtnl.RtnlError as exc:
                        # EOPNOTSUPP: the vxlan port has left its bridge, whose entries
                        # went with it (the network's part is being taken down here).
                        gone = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EOPNOTSUPP)
                        if exc.errno not in gone:
                            raise
    except FileNotFoundError:
        return  # the namespace went meanwhile
    except rtnl.RtnlError as exc:
        raise KernelError(f"programming overlay peers in {path}: {exc.strerror}") from exc


def _close_userspace(ctx: HostContext, network: Network) -> None:
    """The network leaves the host's shared switch: its VNI's peers go with it (the next
    network given that VNI must not inherit them), the switch when it was the last."""
    planes = _userspace.planes_of(ctx)
    plane = planes.get(network.id)
    if isinstance(plane, OverlayPlane):
        plane.release(vni_of(network))
    planes.close(network.id)


def _remove_netns(name: str) -> None:
    """Remove the network's namespace, its links first: the vxlan device's socket, in
    the host's namespace, holds the VNI and UDP port until the device goes, the veths
    hold the sandboxes' interfaces, and a namespace goes whenever the kernel gets round
    to it (seconds on a loaded machine; later still while anything holds it: this
    process's nftables context there is let go of too). So the VNI is free at once for
    the next network given it, and the sandboxes can be connected again at once."""
    path = netns_path(name)
    nftables.close(path)
    gone_or_half_made = contextlib.suppress(OSError, NetlinkError, KernelError)
    with gone_or_half_made, iproute(path) as ipr:
        for ifname in [str(link.get("ifname")) for link in ipr.link("dump")]:
            if ifname != "lo":
                links.delete_link(ipr, ifname)
    with contextlib.suppress(OSError):
        remove_named(path)
