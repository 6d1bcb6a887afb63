"""One default route per sandbox and address family, chosen as Docker chooses it.

Each endpoint offers the sandbox a default route per family (a gateway address, `DEVICE`
for a route straight out of its interface as ipvlan l3 has, or nothing). The endpoints are
ordered as libnetwork orders them (`Endpoint.Less`): higher `--gw-priority` first, then
non-internal networks, then endpoints that offer both families before those that offer
one, then network names in order. The first endpoint that offers IPv4 gives the IPv4
default route, the first that offers IPv6 the IPv6 one, and every other endpoint's default
route goes. After a connect or a disconnect the choice is made again, so the next network
in that order takes over from one that leaves.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from keelnet.errors import KernelError
from keelnet.kernel import rtnl

#: A default route straight out of the interface, with no next hop.
DEVICE = "device"


@dataclass(frozen=True)
class Candidate:
    """What one endpoint offers its sandbox as default routes."""

    ifname: str
    network: str  # name: Docker's last tie-breaker
    internal: bool
    priority: int
    via4: str | None  # a gateway address, DEVICE, or None
    via6: str | None

    def order(self) -> tuple[int, bool, int, str]:
        offers = (self.via4 is not None) + (self.via6 is not None)
        return (-self.priority, self.internal, -offers, self.network)


def choose(candidates: Sequence[Candidate]) -> tuple[Candidate | None, Candidate | None]:
    """The endpoints that give the IPv4 and the IPv6 default route (None: no route)."""
    ordered = sorted(candidates, key=Candidate.order)
    ipv4 = next((c for c in ordered if c.via4 is not None), None)
    ipv6 = next((c for c in ordered if c.via6 is not None), None)
    return ipv4, ipv6


def apply(sandbox_path: str, candidates: Sequence[Candidate]) -> None:
    """Make the sandbox's default routes the chosen ones: the chosen route replaces the
    one there is, then the other endpoints' default routes are removed. Endpoints whose
    interface is not in the sandbox (a plane that is not running) take no part."""
    try:
        with rtnl.Rtnl(sandbox_path) as sandbox:
            present = {c.ifname: sandbox.link_index(c.ifname) for c in candidates}
            usable = [c for c in candidates if present[c.ifname] is not None]
            for version, winner in zip((4, 6), choose(usable), strict=True):
                if winner is not None:
                    via = winner.via4 if version == 4 else winner.via6
                    gateway = None if via == DEVICE else via
                    route = rtnl.add_default_route(
                        present[winner.ifname] or 0, gateway, version=version, replace=True
                    )
                    sandbox.run([route])
                for other in usable:
                    if other is not winner:
                        index = present[other.ifname] or 0
                        _delete(sandbox, rtnl.delete_default_route(index, version=version))
    except rtnl.RtnlError as exc:
        raise KernelError(f"setting the sandbox's default route: {exc.strerror}") from exc


def _delete(sandbox: rtnl.Rtnl, request: rtnl.Request) -> None:
    try:
        sandbox.run([request])
    except rtnl.RtnlError as exc:
        if exc.errno != errno.ESRCH:  # no such route: nothing to remove
            raise
