"""Port security: a sandbox sends only from its own MAC and addresses.

On by default for the bridge, overlay, macvlan and ipvlan drivers, off per network with
`-o port_security=false` (for a sandbox that bridges or routes for others; the option
and where it holds: `keelnet.port_security`). Like
OpenStack's port security and libvirt's clean-traffic filter: a sandbox's port passes
untagged frames from the endpoint's MAC only, IPv4 and IPv6 from the endpoint's addresses
(and its EUI-64 link-local address), ARP and neighbour discovery only about itself, and
no router advertisements or redirects. The userspace switch checks it per port
(`Switch.add_tap(allowed_ips=...)`); the kernel bridge through nftables bridge-family
rules, and on a kernel macvlan network's parent as far as it can (`kernel/nftables_guard.py`).
"""

from __future__ import annotations

import ipaddress

from keelnet.kernel.namespaces import read_sysctl, write_sysctl
from keelnet.kernel.nftables_guard import GuardedPort
from keelnet.model import Endpoint
from keelnet.port_security import OPTION, enabled

__all__ = ["OPTION", "allowed_ips", "enabled", "guarded_port", "link_local", "pin_link_local"]


def link_local(mac: str) -> str:
    """The EUI-64 link-local address (RFC 4291) of `mac`: the one a sandbox's kernel
    gives the interface with the default `addr_gen_mode`."""
    octets = bytes(int(part, 16) for part in mac.split(":"))
    interface_id = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + interface_id))


def allowed_ips(endpoint: Endpoint) -> list[str]:
    """The addresses the endpoint's port may send from."""
    addresses = [address for address in (endpoint.ip, endpoint.ipv6) if address]
    return [*addresses, link_local(endpoint.mac)]


def guarded_port(endpoint: Endpoint, ifname: str) -> GuardedPort:
    """What nftables lets the endpoint's port (named `ifname` on the host) send."""
    return GuardedPort(ifname, endpoint.mac, tuple(allowed_ips(endpoint)))


def pin_link_local(sandbox_path: str, ifname: str) -> bool:
    """For an interface that is up already (a TAP): make the sandbox derive its link-local
    address from the MAC (EUI-64), the one the rules allow, whatever the namespace's
    default says. Returns whether it had to change the setting, which takes effect when
    the link next comes up. A kernel without IPv6 has nothing to pin. (An interface still
    down gets it in the request that configures it: `_veth`'s `eui64_link_local`.)"""
    key = f"net/ipv6/conf/{ifname}/addr_gen_mode"
    try:
        if read_sysctl(sandbox_path, key) == "0":
            return False
        write_sysctl(sandbox_path, key, "0")
    except FileNotFoundError:
        return False
    return True
