"""A Linux network-namespace testbed: a dora_fx cluster (its devices and the network joining
them) made real on one machine, so distributed runs cross kernel-shaped links.

``Layout.of(cluster, prefix)`` names a namespace, interfaces and an address per device
(``layout``); ``shaping`` writes the ``tc`` commands that give each link its rates, and says
how faithful they are.
"""

from .layout import Layout, TestbedError

__all__ = ["Layout", "TestbedError"]
