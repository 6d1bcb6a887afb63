"""IP address management: address pools and subnet carving, in Rust.

``AddressPool`` hands out addresses of one subnet from a hierarchical bitmap
whose every operation is O(1) however fragmented the pool is; ``SubnetPools``
carves subnets out of Docker-style address pools. Both serialize to versioned,
checksummed bytes for the store. Errors are the :mod:`keelnet.errors` classes.
"""

from __future__ import annotations

from keelnet._core import AddressPool, SubnetPools

__all__ = ["AddressPool", "SubnetPools"]
