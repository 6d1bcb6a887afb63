"""keelnet's one exception hierarchy.

Every error keelnet raises on purpose is a :class:`KeelnetError`. Errors coming from
the Rust core are raised as these same classes (the pyo3 layer imports them from
here), so callers never need to know which side of the boundary failed. Classes
that describe bad input also derive from :class:`ValueError`, those about missing
things from :class:`LookupError`, so generic handlers keep working.
"""

from __future__ import annotations


class KeelnetError(Exception):
    """Base class of every error keelnet raises on purpose."""


# --- IPAM ------------------------------------------------------------------------------


class InvalidSubnet(KeelnetError, ValueError):
    """A subnet, address range or pool definition that cannot be used."""


class InvalidAddress(KeelnetError, ValueError):
    """A string that is not an IP address."""


class AddressOutOfRange(KeelnetError, ValueError):
    """An address that is not inside the pool it was asked of."""


class AddressInUse(KeelnetError):
    """An address (or subnet) that is already allocated or reserved."""


class AddressNotAllocated(KeelnetError, LookupError):
    """Releasing an address (or subnet) that is not allocated: a double release."""


class PoolExhausted(KeelnetError):
    """No free address (or subnet) is left in the pool(s)."""


class CorruptState(KeelnetError):
    """Persisted state that fails its checks: truncated, corrupted or of an unknown version.

    keelnet never starts over from a damaged store (that would forget, and so leave
    behind or clobber, everything the store made); the message says how to recover.
    """


# --- packets ---------------------------------------------------------------------------


class MalformedPacket(KeelnetError, ValueError):
    """Bytes that do not form the packet they were parsed as."""


# --- networks, sandboxes, endpoints ----------------------------------------------------


class NotFound(KeelnetError, LookupError):
    """Something named by the caller does not exist."""


class NetworkNotFound(NotFound):
    """No network of that name or id."""


class SandboxNotFound(NotFound):
    """No sandbox of that name, or its network namespace is gone."""


class EndpointNotFound(NotFound):
    """The sandbox is not connected to that network."""


class PortMappingNotFound(NotFound):
    """No such published port."""


class Conflict(KeelnetError):
    """The request clashes with something that already exists."""


class DuplicateNetwork(Conflict):
    """A network of that name already exists."""


class DuplicateSandbox(Conflict):
    """A sandbox (or network namespace) of that name already exists."""


class DuplicateEndpoint(Conflict):
    """The sandbox is already connected to that network."""


class PortInUse(Conflict):
    """The host port is already published."""


class NetworkInUse(Conflict):
    """The network still has endpoints connected."""


class NamespaceClaimed(Conflict):
    """Another store (state directory) manages this host namespace.

    ``state_dir`` and ``store_id`` name that store.
    """

    def __init__(self, message: str, *, state_dir: str, store_id: str) -> None:
        super().__init__(message)
        self.state_dir = state_dir
        self.store_id = store_id


class InvalidRequest(KeelnetError, ValueError):
    """Input keelnet cannot act on."""


class UnknownDriver(InvalidRequest):
    """No driver of that name is registered."""


class InvalidOption(InvalidRequest):
    """A driver option that is unknown to the driver or has a bad value."""


class InvalidName(InvalidRequest):
    """A network or sandbox name that cannot be used."""


class OverlappingSubnet(InvalidRequest):
    """The subnet overlaps the subnet of another network on this host."""


class GatewayOutsideSubnet(InvalidRequest):
    """The gateway (or an auxiliary address) is not inside the network's subnet."""


class MissingParentInterface(InvalidRequest, LookupError):
    """The parent interface named for macvlan/ipvlan does not exist on the host."""


class KernelFeatureMissing(KeelnetError):
    """The running kernel lacks a module a request needs.

    ``module`` names the missing kernel module and ``alternative`` says what to use instead.
    """

    def __init__(self, message: str, *, module: str, alternative: str) -> None:
        super().__init__(f"{message}: kernel module {module!r} is not available; {alternative}")
        self.module = module
        self.alternative = alternative


class KernelError(KeelnetError):
    """The kernel refused a change keelnet asked for (netlink or nftables)."""


class StoreUnavailable(KeelnetError):
    """The shared store (etcd) cannot be reached or has no quorum: nothing was changed."""


class StoreConflict(Conflict):
    """Another host changed the shared store first; the operation may be retried."""


class StateDirError(KeelnetError):
    """The state directory cannot be used: not a directory, read-only, not accessible."""


class DataPlaneUnavailable(KeelnetError):
    """The data plane a network asks for is not available in this build or on this host."""


# --- userspace data plane --------------------------------------------------------------


class DataplaneError(KeelnetError, OSError):
    """The userspace data plane could not do what was asked (open a TAP, bind a VTEP...).

    An :class:`OSError`: ``errno`` holds the kernel's error number (0 when there is none).
    """
