"""Network emulation, so a heterogeneous cluster can be tried on one machine: transfers
shaped to the plan's links and shared media, in the dilated time of ``compute_emulation``
(one emulated second lasts ``time_scale`` wall seconds).

Network: a transfer of ``b`` bytes from device ``u`` to device ``v`` occupies the resources of
``Network.path(u, v)`` (a Wi-Fi medium's airtime, or switch port directions) for ``8 b / rate``
seconds each, then arrives ``path_latency_s`` later. Resources live in a ``MediumLedger``: a
small memory-mapped file every rank on the host shares, locked with ``flock``, holding for each
resource the time it is reserved until and by which flow. Flows reserve chunk by chunk, each
chunk only shortly before the previous one ends, so two flows on one medium interleave chunks
and each gets about half; when another flow holds the medium, a chunk costs
``1 / contention_efficiency`` times more airtime (CSMA/CA collisions and back-off). The tensor
itself moves with torch.distributed P2P once its emulated transfer has ended (``LinkShaper``).

Pacing (the schedule's contention policy): under ``fair`` flows interleave as above. Under
``critical-first`` every message carries a priority ``(request, microbatch, -receiving
stage)``; while a message is being serialized its flow is *registered* in the ledger with that
priority, and before each chunk it checks the flows registered on the resources it needs: if
one of them is more critical (smaller priority), it holds its chunk back until that flow has
finished its message, so one medium carries one sender at a time (the most critical: the
earliest request, then microbatch, then the stage nearest the end of the pipeline) and pays no
contention loss. Equal priorities share as under ``fair``. It is the simulator's pacing
(``sim.scheduled``) at chunk granularity; like it, it assumes the senders coordinate, here
through the shared ledger (on one host). A registration expires if its flow stops renewing
it (a dead rank), so a held flow is never held forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cost_models.network import Network
from .compute_emulation import sleep_until

__all__ = ["MediumLedger", "LinkShaper", "resource_keys"]

def resource_keys(network: Network, devices: Sequence[str]) -> list[str]:
    """Every resource a flow between ``devices`` can use, in a fixed order (ledger slots)."""
    keys: set[str] = set()
    for src in devices:
        for dst in devices:
            keys.update(_key(resource) for resource, _ in network.path(src, dst))
    return sorted(keys)


def _key(resource: tuple[str, str]) -> str:
    return f"{resource[0]}:{resource[1]}"


Priority = tuple[int, int, int]  # (request, microbatch, -receiving stage): smaller goes first

_FLOW_SLOTS = 128  # flows registered at once (more: the extra ones are paced as fair)
_FLOW_FIELDS = 6  # flow id (0: free), request, microbatch, -stage, expires at, resource mask
_REGISTRATION_TTL_S = 1.0  # wall seconds a registration lasts unless its flow renews it


class MediumLedger:
    """Reservations of network resources, shared by every process on the host through one
    memory-mapped file: per resource, the time (``time.monotonic``, system-wide on Linux) it is
    reserved until and the flow that holds it; and the flows registered for ``critical-first``
    pacing, with their priorities and the resources they use."""

    def __init__(self, path: str | Path, keys: Sequence[str]) -> None:
        self.path = Path(path)
        self.slot = {key: i for i, key in enumerate(keys)}
        rows = max(len(keys), 1)
        size = (rows * 2 + _FLOW_SLOTS * _FLOW_FIELDS) * 8
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        self._table = np.ndarray((rows, 2), dtype=np.float64, buffer=self._map)
        self._flows = np.ndarray(
            (_FLOW_SLOTS, _FLOW_FIELDS), dtype=np.float64, buffer=self._map, offset=rows * 2 * 8
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[np.ndarray]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield self._table
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reserve(
        self, hops: Sequence[tuple[str, float, float]], bits: float, not_before: float, flow: int
    ) -> float:
        """Reserve ``bits`` on every hop ``(key, wall seconds per bit, contention efficiency)``
        from the earliest time all are free (and not before ``not_before``); returns the end.
        A registered (paced) flow takes turns with more critical ones rather than colliding
        with them: it pays the contention loss only against a flow of its own priority.
        Renews the flow's registration, if it has one."""
        with self._locked() as table:
            slots = [(self.slot[key], cost, eff) for key, cost, eff in hops]
            start = max([not_before, *(table[i, 0] for i, _, _ in slots)])
            end = start
            now = time.monotonic()
            row = self._row_of(flow)
            for i, cost, eff in slots:
                # another flow holds the resource past now: both want the air at once
                contended = table[i, 1] != flow and table[i, 0] > max(not_before, now)
                if contended and row is not None:
                    contended = self._rival(row, i, now)
                duration = bits * cost / (eff if contended else 1.0)
                table[i, 0], table[i, 1] = start + duration, flow
                end = max(end, start + duration)
            if row is not None:
                self._flows[row, 4] = now + _REGISTRATION_TTL_S
        return float(end)

    def _rival(self, row: int, slot: int, now: float) -> bool:
        """Whether another live registered flow of the same priority uses resource ``slot``."""
        mine = self._flows[row]
        for other in self._flows:
            if (
                other[0] != 0 and other[0] != mine[0] and other[4] >= now
                and int(other[5]) >> slot & 1 and tuple(other[1:4]) == tuple(mine[1:4])
            ):  # fmt: skip
                return True
        return False

    def _mask(self, keys: Sequence[str]) -> int:
        mask = 0
        for key in keys:
            mask |= 1 << self.slot[key]
        return mask

    def _row_of(self, flow: int) -> int | None:
        rows = np.nonzero(self._flows[:, 0] == flow)[0]
        return int(rows[0]) if len(rows) else None

    def register(self, flow: int, priority: Priority, keys: Sequence[str]) -> bool:
        """Register ``flow`` as sending on ``keys`` with ``priority`` (critical-first pacing);
        False when there is no room (the flow is then paced as fair)."""
        if len(self.slot) > 52:  # the resource mask is held exactly in a float64
            return False
        with self._locked():
            now = time.monotonic()
            row = self._row_of(flow)
            if row is None:
                free = np.nonzero((self._flows[:, 0] == 0) | (self._flows[:, 4] < now))[0]
                if not len(free):
                    return False
                row = int(free[0])
            self._flows[row] = (flow, *priority, now + _REGISTRATION_TTL_S, self._mask(keys))
        return True

    def unregister(self, flow: int) -> None:
        with self._locked():
            row = self._row_of(flow)
            if row is not None:
                self._flows[row] = 0.0

    def held_until(self, flow: int, priority: Priority, keys: Sequence[str]) -> float | None:
        """None when no live registered flow more critical than ``priority`` uses one of
        ``keys``; else when to look again (the end of what those resources have reserved)."""
        mask = self._mask(keys)
        with self._locked() as table:
            now = time.monotonic()
            for row in self._flows:
                if row[0] == 0 or row[0] == flow or row[4] < now or not int(row[5]) & mask:
                    continue
                if (int(row[1]), int(row[2]), int(row[3])) < priority:
                    return float(max(table[self.slot[key], 0] for key in keys))
        return None

    def close(self) -> None:
        # numpy holds buffer exports on the map; drop them before closing the map
        del self._table, self._flows
        self._map.close()
        os.close(self._fd)


@dataclass
class _Job:
    src_device: str
    dst_device: str
    nbytes: int
    sent_at: float
    shaped: bool
    action: Callable[[], None]
    priority: Priority | None = None
    on_left: Callable[[], None] | None = None


class LinkShaper:
    """Per destination rank, one thread serializes transfers onto the emulated network (in
    order, back to back) and another delivers each at its emulated arrival, running its action
    (the real torch.distributed send). The latency of one transfer thus overlaps the
    serialization of the next, as on a real link. ``on_left`` (if given) runs when the
    transfer's last bit has left, at the end of its serialization. ``policy``: the schedule's
    contention policy, ``fair`` or ``critical-first`` (see the module doc)."""

    CHUNK_WALL_S = 0.002  # airtime of one reservation: short enough for flows to interleave
    POLL_S = 2e-4  # a held flow looks again at least this much later

    def __init__(
        self,
        network: Network,
        ledger: MediumLedger,
        time_scale: float,
        rank: int,
        policy: str = "fair",
    ) -> None:
        if policy not in ("fair", "critical-first"):
            raise ValueError(
                f"contention policy must be 'fair' or 'critical-first', got {policy!r}"
            )
        self.network, self.ledger, self.time_scale, self.rank = network, ledger, time_scale, rank
        self.policy = policy
        self._queues: dict[int, queue.Queue[_Job | None]] = {}
        self._deliveries: dict[int, queue.Queue[tuple[float, Callable[[], None]] | None]] = {}
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.held_s = 0.0  # wall seconds chunks were held back for more critical flows
        self._held_lock = threading.Lock()  # the link threads of every destination add to it

    def submit(
        self,
        dst_rank: int,
        src_device: str,
        dst_device: str,
        nbytes: int,
        action: Callable[[], None],
        shaped: bool = True,
        *,
        priority: Priority | None = None,
        on_left: Callable[[], None] | None = None,
    ) -> None:
        if self.error is not None:
            raise self.error
        if dst_rank not in self._queues:
            self._queues[dst_rank], self._deliveries[dst_rank] = queue.Queue(), queue.Queue()
            for target, role in ((self._serialize, "link"), (self._deliver, "deliver")):
                thread = threading.Thread(
                    target=target, args=(dst_rank,), name=f"dora-{role}-{dst_rank}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        job = _Job(
            src_device, dst_device, nbytes, time.monotonic(), shaped, action, priority, on_left
        )
        self._queues[dst_rank].put(job)

    def _serialize(self, dst_rank: int) -> None:
        flow = self.rank * 65536 + dst_rank + 1
        jobs, deliveries = self._queues[dst_rank], self._deliveries[dst_rank]
        try:
            while (job := jobs.get()) is not None:
                left = arrival = job.sent_at
                if job.shaped and job.src_device != job.dst_device:
                    left, arrival = self._transfer_end(job, flow)
                deliveries.put((arrival, job.action))
                if job.on_left is not None:
                    sleep_until(left)
                    job.on_left()
        except BaseException as exc:  # noqa: BLE001 - handed to the rank's main thread
            self.error = exc
        deliveries.put(None)

    def _deliver(self, dst_rank: int) -> None:
        deliveries = self._deliveries[dst_rank]
        try:
            while (delivery := deliveries.get()) is not None:
                sleep_until(delivery[0])
                delivery[1]()
        except BaseException as exc:  # noqa: BLE001 - handed to the rank's main thread
            self.error = exc

    def _transfer_end(self, job: _Job, flow: int) -> tuple[float, float]:
        """Reserve the transfer's bits chunk by chunk (held back, under critical-first, while
        a more critical flow uses the same resources); return when its last bit leaves and
        its emulated arrival."""
        path = self.network.path(job.src_device, job.dst_device)
        hops = [
            (_key(resource), seconds_per_bit * self.time_scale, self.network.capacity(resource, 2))
            for resource, seconds_per_bit in path
        ]
        keys = [key for key, _, _ in hops]
        priority = job.priority if self.policy == "critical-first" else None
        paced = priority is not None and self.ledger.register(flow, priority, keys)
        bits_left = 8.0 * job.nbytes
        slowest = max(cost for _, cost, _ in hops)
        chunk_bits = max(self.CHUNK_WALL_S / slowest, 8192.0)
        end = job.sent_at
        try:
            while bits_left > 0:
                chunk = min(chunk_bits, bits_left)
                # reserve the next chunk only just before this one ends, so that other flows
                # on the medium can slot theirs in between
                sleep_until(end - 0.5 * chunk * slowest)
                if paced:
                    assert priority is not None
                    # held: the next chunk starts when the resources are free again (the
                    # ledger's reservations), not when this thread wakes up to see it
                    while (until := self.ledger.held_until(flow, priority, keys)) is not None:
                        began = time.monotonic()
                        sleep_until(max(began + self.POLL_S, until - 0.5 * chunk * slowest))
                        with self._held_lock:
                            self.held_s += time.monotonic() - began
                end = self.ledger.reserve(hops, chunk, end, flow)
                bits_left -= chunk
        finally:
            if paced:
                self.ledger.unregister(flow)
        latency_s = self.network.path_latency_s(job.src_device, job.dst_device)
        return end, end + latency_s * self.time_scale

    def close(self, timeout_s: float) -> None:
        """Let queued transfers finish; raise what a shaper thread raised."""
        for jobs in self._queues.values():
            jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        if self.error is not None:
            raise self.error
