"""ipvlan: endpoints share the parent's MAC; l2 or l3 mode (`ipvlan_mode`).

Kernel ipvlan where the kernel has the module. Where it does not, the userspace data plane
(issue 4) will emulate it: this driver already declares that plane so `dataplane=auto`
resolves to it once it exists; until then such requests fail with a clear error.
"""

from __future__ import annotations

from typing import ClassVar

from keelnet.drivers import _parent, _veth
from keelnet.drivers.base import DATAPLANES, HostContext
from keelnet.drivers.macvlan import LowerDeviceDriver
from keelnet.errors import DataPlaneUnavailable, InvalidOption
from keelnet.kernel import links
from keelnet.model import Endpoint, Network

USERSPACE_AVAILABLE = False  # flips when the userspace data plane (issue 4) lands


class IpvlanDriver(LowerDeviceDriver):
    name = "ipvlan"
    kind = "ipvlan"
    mode_option = "ipvlan_mode"
    options = frozenset({_parent.PARENT, "ipvlan_mode"})
    modes: ClassVar[dict[str, int]] = {"l2": 0, "l3": 1}  # linux/if_link.h IPVLAN_MODE_*
    default_mode = "l2"
    dataplanes = ("kernel", "userspace")

    def choose_dataplane(self, ctx: HostContext, requested: str) -> str:
        if requested not in DATAPLANES:
            raise InvalidOption(
                f"invalid dataplane {requested!r}: use one of {', '.join(DATAPLANES)}"
            )
        kernel_has_it = links.kind_supported("ipvlan", ctx.netns_path)
        if requested == "kernel" or (requested == "auto" and kernel_has_it):
            if not kernel_has_it:
                raise _parent.missing_module("ipvlan networks on the kernel data plane", "ipvlan")
            return "kernel"
        if not USERSPACE_AVAILABLE:
            raise DataPlaneUnavailable(
                "ipvlan: this kernel has no ipvlan module and the userspace data plane that "
                "emulates it is not built yet (issue 4)"
            )
        return "userspace"

    def uses_gateway(self, network: Network) -> bool:
        # l3: the parent host routes; sandboxes get a device default route, no gateway.
        return network.options.get(self.mode_option, self.default_mode) != "l3"

    def join(
        self, ctx: HostContext, network: Network, endpoint: Endpoint, sandbox_path: str
    ) -> None:
        routed = not network.internal
        _veth.configure_sandbox_interface(
            network,
            endpoint,
            sandbox_path,
            default_route=routed and self.uses_gateway(network),
            device_route=routed and not self.uses_gateway(network),
        )

    def link_attributes(self, network: Network) -> dict[str, object]:
        return {"ipvlan_mode": self.modes[network.options.get(self.mode_option, "l2")]}
