"""Network drivers, by name: built-ins plus the `keelnet.drivers` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from keelnet.drivers.base import Driver
from keelnet.drivers.bridge import BridgeDriver
from keelnet.drivers.host import HostDriver
from keelnet.drivers.ipvlan import IpvlanDriver
from keelnet.drivers.macvlan import MacvlanDriver
from keelnet.drivers.none import NoneDriver
from keelnet.drivers.overlay import OverlayDriver
from keelnet.errors import UnknownDriver

BUILTIN: dict[str, type[Driver]] = {
    driver.name: driver
    for driver in (
        BridgeDriver,
        HostDriver,
        NoneDriver,
        MacvlanDriver,
        IpvlanDriver,
        OverlayDriver,
    )
}
# Docker's CLI calls the none driver "null" in places.
ALIASES = {"null": "none"}
ENTRY_POINT_GROUP = "keelnet.drivers"


def get_driver(name: str) -> Driver:
    """An instance of the driver called `name`, built-in or registered by a package."""
    name = ALIASES.get(name, name)
    if name in BUILTIN:
        return BUILTIN[name]()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            driver_class = entry.load()
            if not (isinstance(driver_class, type) and issubclass(driver_class, Driver)):
                raise UnknownDriver(f"entry point {entry.value} is not a keelnet Driver")
            return driver_class()
    raise UnknownDriver(
        f"plugin {name!r} not found: no such network driver (drivers: {', '.join(driver_names())})"
    )


def driver_names() -> list[str]:
    return sorted(set(BUILTIN) | {e.name for e in entry_points(group=ENTRY_POINT_GROUP)})


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "Driver", "driver_names", "get_driver"]
