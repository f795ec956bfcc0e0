"""A Linux network-namespace testbed: a dora_fx cluster (its devices and the network joining
them) made real on one machine, so distributed runs cross kernel-shaped links.

``NetnsCluster(cluster)`` makes a namespace per device behind a router namespace and shapes the
links with ``tc`` (``netns``; how faithful the shaping is: ``shaping``); ``available()`` says
whether that can be done here. ``ranks`` starts a plan's torchrun nodes, each in the namespace
of its device. ``runs`` runs a plan (or the torch.distributed.pipelining peer) over it with
compute emulated and the links the kernel's, shaped for the run's fixed dilation
(``shaped_for``); ``executor`` lets the runtime adapter's dispatcher re-route around a lost
host. ``python -m dora_fx.testbed up|down|status`` brings a testbed up from a shell.
Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2 and sysctl.
"""

from .layout import Layout, TestbedError
from .netns import NetnsCluster, available
from .ranks import (
    NodeCommand,
    node_commands,
    start_nodes,
    stop_nodes,
    torchrun_commands,
    wait_nodes,
    worker_commands,
)
from .runs import dilated, run_peer, run_plan, shaped_for, unpaced, without_latency

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
    "worker_commands",
    "torchrun_commands",
    "dilated",
    "without_latency",
    "unpaced",
    "shaped_for",
    "run_plan",
    "run_peer",
]
