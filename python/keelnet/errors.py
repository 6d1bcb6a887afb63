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


class AddressOutOfRange(KeelnetError, ValueError):
    """An address that is not inside the pool it was asked of."""


class AddressInUse(KeelnetError):
    """An address (or subnet) that is already allocated or reserved."""


class AddressNotAllocated(KeelnetError, LookupError):
    """Releasing an address (or subnet) that is not allocated: a double release."""


class PoolExhausted(KeelnetError):
    """No free address (or subnet) is left in the pool(s)."""


class CorruptState(KeelnetError):
    """Persisted state that fails its checks: truncated, corrupted or of an unknown version."""


# --- packets ---------------------------------------------------------------------------


class MalformedPacket(KeelnetError, ValueError):
    """Bytes that do not form the packet they were parsed as."""
