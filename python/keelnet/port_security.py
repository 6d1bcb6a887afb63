"""Port security's network option and where it holds, without the drivers (read-only
commands answer `inspect` from the store alone). What it does: `drivers/_port_security`."""

from __future__ import annotations

from collections.abc import Mapping

from keelnet.errors import InvalidOption
from keelnet.model import Network

OPTION = "port_security"
#: Drivers whose sandboxes it holds to their addresses: the bridge, overlay and macvlan on both
#: data planes (the kernel's macvlan in part: see `drivers/macvlan`), ipvlan on the
#: userspace one (the kernel's ipvlan slaves all carry the parent's MAC: nothing on the
#: host tells them apart; and this kernel has no ipvlan to test against).
_HOLDS = {
    "bridge": ("kernel", "userspace"),
    "macvlan": ("kernel", "userspace"),
    "overlay": ("kernel", "userspace", "auto"),  # `auto`: each host runs one of them
    "ipvlan": ("userspace",),
}
_WORDS = {"true": True, "1": True, "yes": True, "on": True}
_WORDS |= {"false": False, "0": False, "no": False, "off": False}


def enabled(options: Mapping[str, str]) -> bool:
    """`-o port_security=BOOL`, on unless said otherwise."""
    value = options.get(OPTION, "true")
    try:
        return _WORDS[value.strip().lower()]
    except KeyError:
        raise InvalidOption(
            f"option {OPTION}: {value!r} is not a boolean (true turns it on, false off)"
        ) from None


def holds(network: Network) -> bool:
    """Whether the network's sandboxes send only from their own MAC and addresses
    (`inspect`'s `PortSecurity`)."""
    return network.dataplane in _HOLDS.get(network.driver, ()) and enabled(network.options)
