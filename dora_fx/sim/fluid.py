"""Fluid model of the network for the simulator: flows move bits continuously at rates that
change only when a flow starts or ends on one of their resources.

Rates follow ``Network`` (see cost_models/network.py): every flow on resource ``r`` is offered
``cap_r / sum_f a_rf``, and a flow takes the smallest offer on its path. When a flow starts
or ends, only flows that share a resource with it are settled (bits sent so far at the old
rate) and re-timed; each re-timing bumps the flow's version so stale completion events are
ignored.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from ..cost_models.network import Network, Resource

__all__ = ["FluidNetwork", "arrival_times_s"]


class _Flow:
    __slots__ = ("fid", "remaining_bits", "rate", "last_s", "version", "path")

    def __init__(
        self, fid: int, bits: float, path: tuple[tuple[int, float], ...], now: float
    ) -> None:
        self.fid = fid
        self.remaining_bits = bits
        self.rate = 0.0
        self.last_s = now
        self.version = 0
        self.path = path


class FluidNetwork:
    """Active flows and their rates; ``start``/``finish`` return ``(fid, finish_s, version)``
    for every flow whose completion time changed."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self._index: dict[Resource, int] = {}
        self._shared_capacity: list[float] = []  # capacity once two or more flows contend
        self._load: list[float] = []
        self._members: list[dict[int, None]] = []
        self._paths: dict[tuple[str, str], tuple[tuple[tuple[int, float], ...], float]] = {}
        self.flows: dict[int, _Flow] = {}

    def route(self, src: str, dst: str) -> tuple[tuple[tuple[int, float], ...], float]:
        """(resource indices with seconds per bit, latency) of ``src -> dst``, cached."""
        key = (src, dst)
        hit = self._paths.get(key)
        if hit is not None:
            return hit
        path = []
        for resource, cost in self.network.path(src, dst):
            index = self._index.get(resource)
            if index is None:
                index = self._index[resource] = len(self._load)
                self._shared_capacity.append(self.network.capacity(resource, 2))
                self._load.append(0.0)
                self._members.append({})
            path.append((index, cost))
        hit = (tuple(path), self.network.path_latency_s(src, dst))
        self._paths[key] = hit
        return hit

    def _rate(self, flow: _Flow) -> float:
        best = float("inf")
        for index, _ in flow.path:
            members = self._members[index]
            capacity = self._shared_capacity[index] if len(members) > 1 else 1.0
            offer = capacity / self._load[index]
            if offer < best:
                best = offer
        return best

    def _retime(
        self, affected: dict[int, None], now: float, out: list[tuple[int, float, int]]
    ) -> None:
        flows = self.flows
        for fid in affected:
            flow = flows[fid]
            rate = self._rate(flow)
            if rate == flow.rate:
                continue
            if flow.rate > 0.0:
                flow.remaining_bits -= flow.rate * (now - flow.last_s)
                if flow.remaining_bits < 0.0:
                    flow.remaining_bits = 0.0
            flow.last_s = now
            flow.rate = rate
            flow.version += 1
            out.append((fid, now + flow.remaining_bits / rate, flow.version))

    def start(
        self, fid: int, path: tuple[tuple[int, float], ...], bits: float, now: float
    ) -> list[tuple[int, float, int]]:
        flow = _Flow(fid, bits, path, now)
        self.flows[fid] = flow
        affected: dict[int, None] = {}
        for index, cost in path:
            self._load[index] += cost
            members = self._members[index]
            members[fid] = None
            affected.update(members)
        out: list[tuple[int, float, int]] = []
        self._retime(affected, now, out)
        return out

    def finish(self, fid: int, now: float) -> list[tuple[int, float, int]]:
        flow = self.flows.pop(fid)
        affected: dict[int, None] = {}
        for index, cost in flow.path:
            members = self._members[index]
            del members[fid]
            if members:
                self._load[index] -= cost
                affected.update(members)
            else:
                self._load[index] = 0.0  # no drift left behind by float sums
        out: list[tuple[int, float, int]] = []
        self._retime(affected, now, out)
        return out

    def is_current(self, fid: int, version: int) -> bool:
        flow = self.flows.get(fid)
        return flow is not None and flow.version == version


def arrival_times_s(
    network: Network, flows: Sequence[tuple[str, str, float, float]]
) -> list[float]:
    """When each flow ``(src, dst, nbytes, start_s)`` is fully at ``dst``, with all of them
    sharing ``network`` as they overlap in time (no other traffic)."""
    fluid = FluidNetwork(network)
    arrive = [0.0] * len(flows)
    events: list[tuple[float, int, int, int]] = []  # (time, order, fid, version or -1 = start)
    order = 0
    for fid, (_, _, _, start_s) in enumerate(flows):
        order += 1
        heapq.heappush(events, (start_s, order, fid, -1))
    while events:
        now, _, fid, version = heapq.heappop(events)
        src, dst, nbytes, _ = flows[fid]
        path, latency = fluid.route(src, dst)
        if version == -1:
            if nbytes <= 0 or not path:
                arrive[fid] = now + latency
                continue
            changed = fluid.start(fid, path, 8.0 * nbytes, now)
        elif fluid.is_current(fid, version):
            arrive[fid] = now + latency
            changed = fluid.finish(fid, now)
        else:
            continue
        for other, finish_s, new_version in changed:
            order += 1
            heapq.heappush(events, (finish_s, order, other, new_version))
    return arrive
