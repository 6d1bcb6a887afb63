"""Userspace data planes of one Host: the Rust threads its networks run on.

A userspace plane (an emulated ipvlan, ...) lives in the process that owns the Host: its
TAP devices vanish when the process ends. The Host keeps its planes here, by network id,
and closes them on `remove_network` and `Host.close`; `reconcile()` re-creates the
endpoints a restarted Host finds missing. Drivers reach the registry through the
HostContext the Host hands them.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from keelnet.dataplane import Switch
from keelnet.drivers import _port_security
from keelnet.drivers.base import HostContext
from keelnet.errors import Conflict, DataplaneError, DataPlaneUnavailable, KeelnetError, NotFound
from keelnet.kernel import links
from keelnet.kernel.namespaces import iproute
from keelnet.model import Endpoint


class Plane(Protocol):
    def close(self) -> None: ...


P = TypeVar("P", bound=Plane)


class DataPlanes:
    """The running planes of one Host, by network id. Networks may share one plane (the
    ipvlan networks of one parent, as they share the kernel's ipvlan port)."""

    def __init__(self) -> None:
        self._planes: dict[str, Plane] = {}

    def get(self, network_id: str) -> Plane | None:
        return self._planes.get(network_id)

    def running(self) -> list[Plane]:
        """Every distinct running plane."""
        distinct: list[Plane] = []
        for plane in self._planes.values():
            if not any(plane is seen for seen in distinct):
                distinct.append(plane)
        return distinct

    def add(self, network_id: str, plane: Plane) -> None:
        if network_id in self._planes:
            raise KeelnetError(f"network {network_id[:12]} already has a data plane")
        self._planes[network_id] = plane

    def add_new(self, network_id: str, plane: P, *, start: Callable[[P], None] | None = None) -> P:
        """Registers a plane the caller just opened, after `start(plane)` if given; when
        either fails, the plane is closed again, so nothing is left running."""
        try:
            if start is not None:
                start(plane)
            self.add(network_id, plane)
        except BaseException:
            plane.close()
            raise
        return plane

    def close(self, network_id: str) -> None:
        """The network stops using its plane, which stops (its TAPs vanish) when no other
        network uses it; none running is fine."""
        plane = self._planes.pop(network_id, None)
        if plane is not None and not any(plane is other for other in self._planes.values()):
            plane.close()

    def close_all(self) -> None:
        for network_id in list(self._planes):
            with contextlib.suppress(KeelnetError):  # close the rest whatever one says
                self.close(network_id)

    def __len__(self) -> int:
        return len(self.running())


class SwitchPlane:
    """A plane on one keelnet switch, started with its first port; nothing is left
    running when that port cannot be added."""

    def __init__(
        self, ctx: HostContext, add_first_port: Callable[[Switch], None], **switch_options: bool
    ) -> None:
        self.switch = Switch(ctx.netns_path, **switch_options)
        try:
            add_first_port(self.switch)
            self.switch.start()
        except BaseException:
            self.switch.close()
            raise

    def close(self) -> None:
        self.switch.close()


@dataclass
class PlaneHostContext(HostContext):
    """A HostContext that also owns the Host's userspace data planes."""

    planes: DataPlanes = field(default_factory=DataPlanes)


def planes_of(ctx: HostContext) -> DataPlanes:
    if isinstance(ctx, PlaneHostContext):
        return ctx.planes
    raise DataPlaneUnavailable(
        "userspace data planes need a keelnet.Host to own their threads (this driver call "
        "came without one)"
    )


def add_sandbox_tap(
    switch: Switch,
    endpoint: Endpoint,
    sandbox_path: str,
    *,
    mtu: int | None,
    isolation: str,
    port_security: bool,
    vni: int = 0,
) -> None:
    """The endpoint's TAP port on `switch`, moved into the sandbox as its interface; with
    `port_security`, it sends only from the endpoint's MAC and addresses."""
    try:
        switch.add_tap(
            endpoint.id,
            vni=vni,
            sandbox=sandbox_path,
            ifname=endpoint.ifname,
            mac=endpoint.mac,
            mtu=mtu,
            isolation=isolation,
            allowed_ips=_port_security.allowed_ips(endpoint) if port_security else None,
        )
    except DataplaneError as exc:
        if exc.errno == errno.EEXIST:
            raise Conflict(f"interface {endpoint.ifname} exists in the sandbox") from exc
        raise
    if port_security and _port_security.pin_link_local(sandbox_path, endpoint.ifname):
        # The TAP came up with another link-local address: take it down and up again.
        with iproute(sandbox_path) as ipr:
            index = links.link_index(ipr, endpoint.ifname)
            ipr.link("set", index=index, state="down")
            ipr.link("set", index=index, state="up")


def remove_sandbox_tap(switch: Switch, endpoint: Endpoint) -> None:
    """Remove the endpoint's TAP port; one already gone is fine (idempotent teardown)."""
    with contextlib.suppress(NotFound):
        switch.remove_port(endpoint.id)
