"""A Linux network-namespace testbed: a dora_fx cluster (its devices and the network joining
them) made real on one machine, so distributed runs cross kernel-shaped links.

``NetnsCluster(cluster)`` makes a namespace per device behind a router namespace and shapes the
links with ``tc`` (``netns``; how faithful the shaping is: ``shaping``); ``available()`` says
whether that can be done here. ``ranks`` starts a plan's torchrun nodes, each in the namespace
of its device. ``python -m dora_fx.testbed up|down|status`` does the same from a shell.
Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2 and sysctl.
"""

from .layout import Layout, TestbedError
from .netns import NetnsCluster, available
from .ranks import NodeCommand, node_commands, start_nodes, stop_nodes, wait_nodes

__all__ = [
    "NetnsCluster",
    "available",
    "Layout",
    "TestbedError",
    "NodeCommand",
    "node_commands",
    "start_nodes",
    "wait_nodes",
    "stop_nodes",
]
