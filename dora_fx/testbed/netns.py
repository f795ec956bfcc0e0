"""A dora_fx cluster made real on one Linux machine: a network namespace per device, joined by
kernel-shaped links, so a distributed run's tensors cross real TCP connections whose rates the
kernel enforces, instead of the runtime's own pacing.

Topology. A router namespace ``{prefix}-hub`` stands for the model's router of unbounded
capacity joining the media. Each device gets a namespace ``{prefix}-{short}`` holding one end
of a veth pair (named ``{short}``, address ``10.77.0.k/24``, k = device index + 1); the other
end (``{prefix}-{short}``) sits in the router's namespace with a /32 route to the device and
proxy ARP, so every device reaches every other through the router, one IP hop (the TTL falls by
one, which tells a shared medium's up hop from its down hop: ``shaping``). Devices on a switched
medium get an htb cap each way on their veth; the stations of a shared medium all pass the
medium's ifb, whose htb is the AP's airtime. How exact that is, and what is left out (latency,
contention loss, airtime of slow stations), is written in ``shaping``'s docstring.

Nothing is made in the root namespace, so a testbed cannot disturb the machine's own network,
and several testbeds (different prefixes) can be up at once. ``down()`` kills every process in
the prefix's namespaces and deletes them, which takes their links, routes and qdiscs along;
it runs after a failed ``up()`` and on leaving the ``with`` block, whatever happened inside.

    with NetnsCluster(dora_fx.scenarios.smart_home()) as testbed:
        proc = testbed.popen("phone", ["python", "-c", "..."])
        print(testbed.measure_rate_bps("phone", "laptop", 10_000_000))
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..cost_models.cluster import Cluster
from .commands import (
    kill_namespace,
    namespaces_of,
    require_root_and_tools,
    run_command,
    teardown,
    write_state,
)
from .layout import NETMASK_BITS, DeviceSlot, Layout, TestbedError
from .measure import MEASURE_PORT, measure_rate_bps
from .shaping import DEVICE_TTL, air_commands, cap_commands, shaping_lines

__all__ = ["NetnsCluster", "available"]


def available() -> tuple[bool, str]:
    """Whether a testbed can be made here, and why not: probes by really making (and deleting)
    a throwaway namespace with a veth pair, an htb, an ifb and a mirred redirect."""
    try:
        require_root_and_tools()
    except TestbedError as exc:
        return False, str(exc)
    probe = f"dorafxprobe-{os.getpid()}"  # never a testbed's: prefixes have 6 characters at most
    try:
        for argv in _probe_commands(probe):
            run_command(argv)
    except TestbedError as exc:
        return False, f"cannot make network namespaces with shaped links here: {exc}"
    finally:
        with contextlib.suppress(TestbedError):
            run_command(("ip", "netns", "delete", probe))
    return True, "network namespaces, veth pairs, htb, ifb and mirred work here"


def _probe_commands(ns: str) -> list[tuple[str, ...]]:
    return [
        ("ip", "netns", "add", ns),
        ("ip", "-n", ns, "link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1"),
        *cap_commands(ns, "probe0", 1e6),
        ("ip", "-n", ns, "link", "add", "name", "probe2", "type", "ifb"),
        ("tc", "-n", ns, "qdisc", "add", "dev", "probe1", "clsact"),
        ("tc", "-n", ns, "filter", "add", "dev", "probe1", "ingress", "protocol", "all", "u32",
         "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "probe2"),
    ]  # fmt: skip


class NetnsCluster:
    """A cluster as network namespaces (see the module docstring); a context manager.

    ``up()`` refuses when namespaces of ``prefix`` already exist (another testbed, or one left
    by a crash: ``python -m dora_fx.testbed down --prefix PREFIX`` removes it). ``down()``
    removes everything of the prefix once this object's ``up()`` has begun making it; it is
    idempotent, and does nothing to a testbed this object did not make.
    """

    def __init__(self, cluster: Cluster, prefix: str = "dora") -> None:
        self.cluster = cluster
        self.layout = Layout.of(cluster, prefix)
        self._owned = False

    @property
    def prefix(self) -> str:
        return self.layout.prefix

    def __enter__(self) -> NetnsCluster:
        self.up()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()

    # -- making and removing --------------------------------------------------------------

    def up(self) -> NetnsCluster:
        """Make the router, the devices' namespaces and links, and the shaping; on any failure
        remove what was made and raise."""
        require_root_and_tools()
        existing = namespaces_of(self.prefix)
        if existing:
            raise TestbedError(
                f"namespaces of testbed prefix {self.prefix!r} already exist: {existing}; tear "
                f"them down with `python -m dora_fx.testbed down --prefix {self.prefix}` (or "
                "pick another prefix)"
            )
        self._owned = True
        try:
            self._make_router()
            for slot in self.layout.devices:
                self._make_device(slot)
            for medium in self.layout.shared_media:
                stations = [self.layout.slot(name) for name in medium.stations]
                _run_all(air_commands(self.layout.router_namespace, medium, stations))
            write_state(self.layout)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> list[str]:
        """Kill every process in the testbed's namespaces and delete them all; the namespaces
        removed (none when this object made nothing, or already removed it)."""
        if not self._owned:
            return []
        removed = teardown(self.prefix)
        self._owned = False
        return removed

    def _make_router(self) -> None:
        ns = self.layout.router_namespace
        run_command(("ip", "netns", "add", ns))
        _sysctl(ns, "net.ipv4.ip_forward=1", *_NO_IPV6)
        run_command(("ip", "-n", ns, "link", "set", "lo", "up"))

    def _make_device(self, slot: DeviceSlot) -> None:
        ns, router = slot.namespace, self.layout.router_namespace
        run_command(("ip", "netns", "add", ns))
        # IPv4 only, sent with the TTL the shared media's hop filters expect
        _sysctl(ns, f"net.ipv4.ip_default_ttl={DEVICE_TTL}", *_NO_IPV6)
        _run_all([
            ("ip", "-n", ns, "link", "set", "lo", "up"),
            # "name" and "dev" before every device-side name: `ip` reads a bare "a" or "up"
            # as a keyword
            ("ip", "link", "add", "name", slot.interface, "netns", ns, "type", "veth",
             "peer", "name", slot.router_interface, "netns", router),
            ("ip", "-n", ns, "addr", "add", f"{slot.address}/{NETMASK_BITS}",
             "dev", slot.interface),
            ("ip", "-n", ns, "link", "set", "dev", slot.interface, "up"),
            ("ip", "-n", router, "link", "set", "dev", slot.router_interface, "up"),
            ("ip", "-n", router, "route", "add", f"{slot.address}/32",
             "dev", slot.router_interface),
        ])  # fmt: skip
        _sysctl(router, f"net.ipv4.conf.{slot.router_interface}.proxy_arp=1")
        # one frame per packet: htb charges a GSO super-packet (up to 64 KB) at once, so a
        # message sent after a pause passed its link faster than the rate (7-20% for 64 KB)
        for namespace, interface in ((ns, slot.interface), (router, slot.router_interface)):
            run_command(("ip", "-n", namespace, "link", "set", "dev", interface,
                         "gso_max_segs", "1"))  # fmt: skip
        if slot.medium_kind == "switched":
            _run_all(cap_commands(ns, slot.interface, slot.up_bps))
            _run_all(cap_commands(router, slot.router_interface, slot.down_bps))

    # -- using ----------------------------------------------------------------------------

    def address(self, device: str) -> str:
        """The device's IPv4 address (reachable from every other device of the testbed)."""
        return self.layout.slot(device).address

    def interface(self, device: str) -> str:
        """The device's interface inside its namespace (``GLOO_SOCKET_IFNAME`` for gloo)."""
        return self.layout.slot(device).interface

    def namespace(self, device: str) -> str:
        return self.layout.slot(device).namespace

    def popen(
        self,
        device: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the device's namespace (``ip netns exec``); ``kw`` go to
        ``subprocess.Popen``. The caller waits for it (with a timeout) and kills it."""
        ip = shutil.which("ip") or "ip"  # an absolute path: ``env`` may lack PATH
        return subprocess.Popen(
            [ip, "netns", "exec", self.namespace(device), *argv],
            env=None if env is None else dict(env),
            **kw,
        )

    def kill(self, device: str) -> None:
        """SIGKILL every process in the device's namespace: the device is lost (its peers see
        their connections reset), as when a host dies."""
        kill_namespace(self.namespace(device))

    def bytes_received(self, device: str) -> int:
        """Bytes the device's interface has received so far (the kernel's counter): how a
        caller sees that traffic is flowing, e.g. that a run is under way."""
        slot = self.layout.slot(device)
        shown = run_command(
            ("ip", "-n", slot.namespace, "-j", "-s", "link", "show", "dev", slot.interface)
        )
        return int(json.loads(shown)[0]["stats64"]["rx"]["bytes"])

    def measure_rate_bps(
        self, src: str, dst: str, nbytes: int, port: int = MEASURE_PORT, timeout_s: float = 60.0
    ) -> float:
        """TCP goodput (bits/s) of one stream of ``nbytes`` from ``src`` to ``dst``."""
        return measure_rate_bps(self, src, dst, nbytes, port=port, timeout_s=timeout_s)

    def describe(self) -> list[str]:
        """One line per device: namespace, interface, address; then the shaping."""
        return describe(self.layout)


def describe(layout: Layout) -> list[str]:
    lines = [f"testbed {layout.prefix!r} of cluster {layout.cluster_name!r} "
             f"(router namespace {layout.router_namespace})"]  # fmt: skip
    for slot in layout.devices:
        lines.append(
            f"  {slot.device:<14} namespace {slot.namespace:<16} interface {slot.interface:<9} "
            f"address {slot.address}"
        )
    lines += [f"  {line}" for line in shaping_lines(layout)]
    lines.append("  one-way latency is not reproduced (no netem): links are shaped in rate only")
    return lines


_NO_IPV6 = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def _sysctl(namespace: str, *settings: str) -> None:
    if not Path("/proc/sys/net/ipv6").exists():
        settings = tuple(s for s in settings if not s.startswith("net.ipv6."))
    run_command(("ip", "netns", "exec", namespace, "sysctl", "-qw", *settings))


def _run_all(commands: Sequence[Sequence[str]]) -> None:
    for argv in commands:
        run_command(argv)
