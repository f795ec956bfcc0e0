"""The peer's device and network emulation, hooked into torch.distributed.pipelining's code.

It is the emulation of ``runtime.distributed``, fitted to a stage torch built:

* compute: the stage submodule's ``forward`` is wrapped in a ``ComputeStretch`` whose factor
  makes one forward last the device's roofline time of the ops it records in the warm-up
  (``CostRecorder``), against the running median of its measured CPU time;
* transfers: ``schedules._sorted_batch_p2p`` (what ``ScheduleGPipe`` posts its sends and
  receives through) hands every send to the same ``LinkShaper`` and shared-medium
  ``MediumLedger``; the real ``dist.isend`` is posted when the emulated transfer ends, and the
  schedule's wait on that send returns after it.

``_Emulation`` holds one rank's hooks and counters; ``_start_emulation`` sets its time scale,
compute factor and link shaper after the warm-up, agreed across the ranks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from torch import nn

from ..cost_models.cluster import Cluster
from ..runtime.compute_emulation import ComputeStretch, agree_dilation, measured_reference_s
from ..runtime.cost_recorder import CostRecorder, OpCost, stage_time_s
from ..runtime.network_emulation import LinkShaper, MediumLedger, resource_keys
from .pipelining_config import PeerConfig

__all__: list[str] = []  # the peer rank's own machinery: ``pipelining_rank`` uses it


class _DeferredSend:
    """A send the link shaper posts when its emulated transfer ends. To the schedule it is
    done at once, as a socket send is once the kernel has buffered it: the peer does not wait
    for its transfers (Dora's runtime does not either); ``finish`` waits for the real send."""

    def __init__(self, op: dist.P2POp, timeout_s: float) -> None:
        self.op, self.timeout_s = op, timeout_s
        self.posted = threading.Event()
        self.work: Any = None

    def post(self) -> None:
        op = self.op
        self.work = dist.isend(op.tensor, op.peer, group=op.group, tag=op.tag)
        self.posted.set()

    def wait(self, timeout: Any = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def done(self) -> bool:
        return self.posted.is_set() and self.work.is_completed()

    def finish(self) -> None:
        if not self.posted.wait(self.timeout_s):
            raise TimeoutError(f"the emulated link did not deliver a send in {self.timeout_s:g} s")
        self.work.wait()


class _Emulation:
    """This rank's compute stretch and link shaper, hooked into the schedule."""

    def __init__(self, rank: int, devices: list[str], timeout_s: float) -> None:
        self.rank, self.devices, self.timeout_s = rank, devices, timeout_s
        self.stretch = ComputeStretch(None)
        self.shaper: LinkShaper | None = None
        self.ops: list[OpCost] | None = None  # recorded on the first forward
        self.device_item_s = 0.0
        self.cpu_samples: list[float] = []
        self.device_wall_s: float | None = None
        self.forwards = 0
        self.bytes_sent = 0
        self.stream_start = 0  # index of the stream's first CPU sample
        self.sends: list[_DeferredSend] = []

    def wrap_forward(self, module: nn.Module) -> None:
        forward = module.forward

        def stretched(*args: Any, **kwargs: Any) -> Any:
            if self.ops is None:  # the first forward counts the stage's ops (not a sample)
                with CostRecorder() as recorder:
                    out = forward(*args, **kwargs)
                self.ops = recorder.ops
                return out
            cpu_before = self.stretch.busy_cpu_s
            self.stretch.resume()
            out = forward(*args, **kwargs)
            self.stretch.settle()
            self.forwards += 1
            self.cpu_samples.append(self.stretch.busy_cpu_s - cpu_before)
            self._rescale()
            return out

        module.forward = stretched  # type: ignore[method-assign]

    def _rescale(self) -> None:
        # as runtime.distributed: an item lasts the device's time times its own deviation
        if self.device_wall_s is None:
            return
        reference = measured_reference_s(self.cpu_samples, self.stream_start)
        if reference > 0:
            self.stretch.factor = self.device_wall_s / reference

    def sorted_batch_p2p(
        self, original: Callable[..., dict[int, list[Any]]]
    ) -> Callable[..., dict[int, list[Any]]]:
        def shaped(p2p_ops: list[dist.P2POp], desc: str | None = None) -> dict[int, list[Any]]:
            shaper = self.shaper
            if shaper is None:
                return original(p2p_ops, desc=desc)
            sends = [op for op in p2p_ops if op.op is dist.isend]
            self.sends = [d for d in self.sends if not d.done()]
            works = original([op for op in p2p_ops if op.op is not dist.isend], desc=desc)
            for op in sends:
                deferred = _DeferredSend(op, self.timeout_s)
                nbytes = op.tensor.numel() * op.tensor.element_size()
                self.bytes_sent += nbytes
                self.sends.append(deferred)
                src, dst = self.devices[self.rank], self.devices[op.peer]
                shaper.submit(op.peer, src, dst, nbytes, deferred.post, True)
                works.setdefault(op.peer, []).append(deferred)
            return works

        return shaped


def _start_emulation(
    config: PeerConfig, emulation: _Emulation, control: Any, cpu_item_s: float
) -> float:
    """Dilation, compute factor and link shaper, as ``runtime.distributed`` sets them."""
    reference = measured_reference_s(emulation.cpu_samples) or emulation.stretch.busy_cpu_s
    if not config.emulate:
        return 1.0
    assert config.cluster is not None and config.host is not None and config.ledger_path
    cluster = Cluster.from_json(config.cluster)
    device = cluster.device(config.devices[emulation.rank])
    device_item_s = emulation.device_item_s = stage_time_s(device, emulation.ops or [])
    stretch = emulation.stretch
    inflation = stretch.busy_wall_s / stretch.busy_cpu_s if stretch.busy_cpu_s else 1.0
    scale = agree_dilation(
        reference, device_item_s, inflation, cpu_item_s, len(config.devices), control,
        config.time_scale,
    )  # fmt: skip
    emulation.device_wall_s = scale * device_item_s
    emulation.stretch.factor = emulation.device_wall_s / reference if reference > 0 else scale
    keys = resource_keys(cluster.network, config.devices)
    ledger = MediumLedger(config.ledger_path, keys)
    emulation.shaper = LinkShaper(cluster.network, ledger, scale, emulation.rank)
    return scale
