"""Docker's plugin protocol, served and consumed.

Served (`keelnet plugin`): keelnet's drivers, data planes and IPAM as Docker's remote
network and IPAM driver (:mod:`keelnet.plugin.server`, :mod:`~keelnet.plugin.network`,
:mod:`~keelnet.plugin.ipam`). Consumed: any Docker network or IPAM plugin as a keelnet driver
(:mod:`keelnet.plugin.client`, :mod:`keelnet.drivers.remote`). Both speak
:mod:`keelnet.plugin.protocol`.
"""
