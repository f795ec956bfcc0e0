"""Device and network emulation, so a heterogeneous cluster can be tried on one machine.

Everything runs *dilated*: one emulated second lasts ``time_scale`` wall seconds, so devices
faster than the host can be emulated too (a rank can only slow its compute down). Metrics are
divided by ``time_scale`` to report device time.

Compute: a rank counts the FLOPs and bytes of every ATen op of its stage once (``CostRecorder``)
and prices them with the roofline (``Device.node_time_s``) on its device. A compute segment
that took ``c`` CPU seconds of the rank's thread then lasts

    c * device_time / host_time * time_scale            wall seconds,

padded with sleep (``ComputeStretch``). ``host_time`` is the stage's time on the host: by default
its *measured* CPU time per item in the warm-up (so a stage's emulated time is the device's
predicted time, varying as the host's measurements vary), or, with ``reference="profile"``,
the calibrated host profile's roofline prediction for the same ops (so errors of the host model
carry into the emulated device). CPU time, not wall time, is scaled, so ranks that share the
host's cores do not inflate each other's compute.

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
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ..cost_models.device import Device
from ..cost_models.network import Network
from ..passes.op_costs import dense_flops, is_misaligned_gemm, is_view, op_name, other_flops

__all__ = [
    "OpCost",
    "CostRecorder",
    "stage_time_s",
    "contention_margin",
    "host_capacity_scale",
    "dilation",
    "measured_reference_s",
    "CpuSamples",
    "ComputeStretch",
    "MediumLedger",
    "LinkShaper",
    "resource_keys",
]

_SDPA = torch.ops.aten.scaled_dot_product_attention.default
_COMM_OPS = {"send", "recv"}
# Allocations a composite op makes for its outputs when it decomposes at dispatch (eval
# batch_norm -> empty + native_batch_norm): their time is the filling op's. Counted, each
# cost a per-op overhead the captured graph (and so the simulator) does not have, 52 of them
# in MobileNetV2: about a fifth of its predicted time on a Jetson.
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


@dataclass(frozen=True)
class OpCost:
    op_class: str  # "dense" or "other" (views are not recorded: they are free)
    flops: float
    bytes_moved: float
    output_bytes: float | None = None
    misaligned_flops: float = 0.0


class CostRecorder(TorchDispatchMode):
    """Records the cost of every ATen op a forward executes, with the project's formulas
    (``passes.op_costs``) evaluated on the real tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpCost] = []

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = op_name(func)
        if name not in _COMM_OPS and name not in _ALLOCATIONS and not is_view(name):
            self.ops.append(_op_cost(func, name, args, kwargs, out))
        return out


def _op_cost(
    func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> OpCost:
    moved = float(sum(_nbytes(v) for v in pytree.tree_leaves((args, kwargs, out))))
    written = float(sum(_nbytes(v) for v in pytree.tree_leaves(out)))
    try:
        if name.startswith("_scaled_dot_product"):  # the CPU kernel under sdpa
            flops = dense_flops(_SDPA, tuple(args[:3]), {}, out[0])
        else:
            flops = dense_flops(func, args, kwargs, out)
        if flops is not None:
            misaligned = float(flops) if is_misaligned_gemm(name, out) else 0.0
            return OpCost("dense", float(flops), moved, written, misaligned)
        other = other_flops(name, args, out)
    except Exception:  # noqa: BLE001 - an op whose formula does not fit: price its bytes only
        other = None
    return OpCost("other", float(other or 0), moved, written)


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def stage_time_s(device: Device, ops: Sequence[OpCost]) -> float:
    """Roofline time of a recorded forward on ``device`` (sum of its op times)."""
    return sum(
        device.node_time_s(op.flops, op.bytes_moved, op.op_class, op.output_bytes, op.misaligned_flops)
        for op in ops
    )


def contention_margin(ranks: int, cores: int | None = None) -> float:
    """Dilation headroom so that ranks sharing the host's cores rarely compute at once: each
    rank computes about ``1 / margin`` of the time, so ``ranks / margin`` cores are busy on
    average; keep that at half the cores (the host has other work too), and at least 1.5x."""
    cores = cores or os.cpu_count() or 1
    return max(1.5, 2.0 * ranks / cores)


REFERENCE_WINDOW = 256  # items the measured compute reference averages


def measured_reference_s(cpu_samples: Sequence[float], stream_start: int = 0) -> float:
    """Host CPU seconds per item a device's predicted time is scaled against: the mean of the
    recent samples, those of the emulated stream (from ``stream_start``) once there are a few.
    An item then lasts the predicted time times its own deviation from that mean, so items
    last the predicted time on average. (The median did not: CPU times on a shared host skew
    right. Nor did warm-up samples: items run back to back there, on warm caches, and took
    6-12% less CPU than the stream's, which sleep between items.)

    Reads only the window: O(``REFERENCE_WINDOW``) whatever the number of samples."""
    total = len(cpu_samples)
    take = _window_len(total, len(range(total)[stream_start:]))
    return sum(cpu_samples[total - take :]) / take if take else 0.0


def _window_len(total: int, stream: int) -> int:
    """How many of the last samples ``measured_reference_s`` averages: the stream's once it
    has ``_STREAM_SAMPLES``, else all, at most ``REFERENCE_WINDOW``."""
    return min(stream if stream >= _STREAM_SAMPLES else total, REFERENCE_WINDOW)


_STREAM_SAMPLES = 8


class CpuSamples:
    """CPU seconds per item as a rank measures them, keeping only the last
    ``REFERENCE_WINDOW`` (what ``measured_reference_s`` reads) however long the rank serves:
    ``reference_s(stream_start)`` is ``measured_reference_s`` of every sample appended so far,
    in constant time and memory."""

    def __init__(self) -> None:
        self.count = 0  # samples appended so far
        self._recent: deque[float] = deque(maxlen=REFERENCE_WINDOW)

    def __len__(self) -> int:
        return self.count

    def append(self, cpu_s: float) -> None:
        self._recent.append(cpu_s)
        self.count += 1

    def reference_s(self, stream_start: int = 0) -> float:
        take = _window_len(self.count, len(range(self.count)[stream_start:]))
        recent = self._recent
        return sum(islice(recent, len(recent) - take, None)) / take if take else 0.0


HOST_LOAD = 0.3  # of the cores left to the run: the share an emulated run may keep busy


def host_capacity_scale(
    cpu_per_item_s: float,
    bottleneck_item_s: float,
    inflation: float = 1.0,
    cores: int | None = None,
    load: float = HOST_LOAD,
) -> float:
    """Dilation at which the host keeps up with the emulated pipeline.

    At the emulated rate an item leaves at best every ``scale * bottleneck_item_s`` wall
    seconds, and one item costs the host ``cpu_per_item_s`` of CPU summed over every rank and
    thread (driver, transport and gloo threads, not only the stage's compute). Of the host's
    cores, ``cores / inflation`` are the run's (``inflation``: wall over CPU time of compute in
    the warm-up, above 1 when other work shares the host). Keeping the run under ``load`` of
    those means a rank woken to compute or send rarely queues for a core; queueing is time
    the emulation cannot see, and it made runs on fast devices (small dilation) slower than
    the devices they emulate::

        scale >= cpu_per_item_s / (load * cores / inflation * bottleneck_item_s)
    """
    cores = cores or os.cpu_count() or 1
    available = cores / max(inflation, 1.0)
    return cpu_per_item_s / (load * available * max(bottleneck_item_s, 1e-12))


def dilation(
    need: float,
    ranks: int,
    cpu_per_item_s: float,
    bottleneck_item_s: float,
    inflation: float = 1.0,
) -> float:
    """The run's time scale: every device emulable with headroom (``need``: the largest host
    over device time of a rank, times ``contention_margin``) and the host able to keep up
    (``host_capacity_scale``); never below real time."""
    return max(
        need * contention_margin(ranks),
        host_capacity_scale(cpu_per_item_s, bottleneck_item_s, inflation),
        1.0,
    )


class ComputeStretch:
    """Pads compute segments to ``factor`` times their CPU time (see the module doc).

    ``resume()`` opens a segment, ``settle()`` closes it: it sleeps until the emulated end and
    returns the segment's emulated wall duration. With ``factor=None`` nothing is padded and a
    segment lasts what it lasted. A segment that ends late (the sleep overshot on a busy host,
    or the compute itself took longer than emulated) leaves a *debt* the next segments pay
    back out of their padding, so the device keeps its emulated pace on average: with many
    short segments per request (the schedule's), sleep overshoots would otherwise add up.
    """

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.busy_wall_s = 0.0
        self.busy_cpu_s = 0.0
        self.overrun_wall_s = 0.0  # compute that took longer in wall time than emulated
        self.late_wall_s = 0.0  # sleeps that ended after their emulated end
        self.debt_wall_s = 0.0  # lateness not paid back yet
        self._wall0 = time.monotonic()
        self._cpu0 = time.thread_time()

    def resume(self) -> None:
        self._wall0, self._cpu0 = time.monotonic(), time.thread_time()

    def settle(self) -> float:
        now, cpu_s = time.monotonic(), time.thread_time() - self._cpu0
        self.busy_cpu_s += cpu_s
        if self.factor is None:
            elapsed = now - self._wall0
        else:
            end = self._wall0 + cpu_s * self.factor
            if end > now:
                paid = min(self.debt_wall_s, end - now)
                self.debt_wall_s -= paid
                _sleep_until(end - paid)
                late = time.monotonic() - (end - paid)
                self.late_wall_s += late
                self.debt_wall_s += late
            else:
                self.overrun_wall_s += now - end
                self.debt_wall_s += now - end
            elapsed = max(end, now) - self._wall0
        self.busy_wall_s += elapsed
        self.resume()
        return elapsed


def _sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(left)


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
                    _sleep_until(left)
                    job.on_left()
        except BaseException as exc:  # noqa: BLE001 - handed to the rank's main thread
            self.error = exc
        deliveries.put(None)

    def _deliver(self, dst_rank: int) -> None:
        deliveries = self._deliveries[dst_rank]
        try:
            while (delivery := deliveries.get()) is not None:
                _sleep_until(delivery[0])
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
                _sleep_until(end - 0.5 * chunk * slowest)
                if paced:
                    assert priority is not None
                    # held: the next chunk starts when the resources are free again (the
                    # ledger's reservations), not when this thread wakes up to see it
                    while (until := self.ledger.held_until(flow, priority, keys)) is not None:
                        began = time.monotonic()
                        _sleep_until(max(began + self.POLL_S, until - 0.5 * chunk * slowest))
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
