"""The peer's emulation for training: ``pipelining_emulation``'s, extended to the backward and
the optimizer step, and hooked where both of torch's single-stage schedules send.

* compute: four segments per rank, each stretched to its device's roofline time as the
  inference peer stretches its forward (``ComputeStretch`` against the running mean of the
  segment's measured CPU time): the stage submodule's ``forward``, the schedule's loss (the
  last stage's ``_compute_loss``), the stage's ``backward_one_chunk`` (the autograd ops it
  runs, recorded by the same ``CostRecorder``: the backward's real FLOPs and bytes, not a
  multiple of the forward's) and the optimizer's ``step``;
* transfers: ``schedules._batch_p2p``, which ``ScheduleGPipe`` reaches through
  ``_sorted_batch_p2p`` and ``Schedule1F1B`` calls directly, hands every send to the
  ``LinkShaper`` and ``MediumLedger`` (a ``_DeferredSend``, as for inference) and posts the
  receives as torch does. Emulated, a batch that mixes sends and receives (1F1B's
  ``fwd_send_bwd_recv``) so never reaches ``dist.batch_isend_irecv``: only unemulated runs
  exercise torch's own path there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from ..cost_models.cluster import Cluster
from ..runtime.compute_emulation import ComputeStretch, agree_dilation, measured_reference_s
from ..runtime.cost_recorder import CostRecorder, OpCost, stage_time_s
from ..runtime.network_emulation import LinkShaper, MediumLedger, resource_keys
from .pipelining_config import PeerTrainConfig
from .pipelining_emulation import _DeferredSend

__all__: list[str] = []  # the peer training rank's own machinery

SEGMENTS = ("forward", "loss", "backward", "optimizer")


class _Segment:
    """One kind of compute of a rank, stretched to the device's time for its recorded ops."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stretch = ComputeStretch(None)
        self.ops: list[OpCost] | None = None  # recorded on the first call
        self.cpu_samples: list[float] = []
        self.stream_start = 0
        self.device_s = 0.0  # the device's time for one call
        self.device_wall_s: float | None = None  # the same, dilated
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def stretched(*args: Any, **kwargs: Any) -> Any:
            if self.ops is None:  # the first call counts the segment's ops (not a sample)
                with CostRecorder() as recorder:
                    out = fn(*args, **kwargs)
                self.ops = recorder.ops
                return out
            cpu_before = self.stretch.busy_cpu_s
            self.stretch.resume()
            out = fn(*args, **kwargs)
            self.stretch.settle()
            self.calls += 1
            self.cpu_samples.append(self.stretch.busy_cpu_s - cpu_before)
            if self.device_wall_s is not None:
                reference = measured_reference_s(self.cpu_samples, self.stream_start)
                if reference > 0:
                    self.stretch.factor = self.device_wall_s / reference
            return out

        return stretched

    def reference_s(self) -> float:
        return measured_reference_s(self.cpu_samples) or self.stretch.busy_cpu_s

    def start_stream(self, scale: float | None) -> None:
        """After the warm-up: stretch to the dilated device time (``None``: do not stretch)."""
        reference = self.reference_s()
        if scale is not None:
            self.device_wall_s = scale * self.device_s
            factor: float | None = self.device_wall_s / reference if reference > 0 else scale
        else:
            factor = None
        self.stretch = ComputeStretch(factor)
        self.calls, self.stream_start = 0, len(self.cpu_samples)


class _TrainEmulation:
    """This rank's segments and link shaper, hooked into the stage, optimizer and schedule."""

    def __init__(self, rank: int, devices: list[str], timeout_s: float) -> None:
        self.rank, self.devices, self.timeout_s = rank, devices, timeout_s
        self.segments = {name: _Segment(name) for name in SEGMENTS}
        self.shaper: LinkShaper | None = None
        self.bytes_sent = 0
        self.sends: list[_DeferredSend] = []

    def batch_p2p(self, original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        def shaped(p2p_ops: list[dist.P2POp], desc: str | None = None) -> list[Any]:
            shaper = self.shaper
            if shaper is None:
                return original(p2p_ops, desc=desc)
            sends = [op for op in p2p_ops if op.op is dist.isend]
            self.sends = [d for d in self.sends if not d.done()]
            works = list(original([op for op in p2p_ops if op.op is not dist.isend], desc=desc))
            for op in sends:
                deferred = _DeferredSend(op, self.timeout_s)
                nbytes = op.tensor.numel() * op.tensor.element_size()
                self.bytes_sent += nbytes
                self.sends.append(deferred)
                src, dst = self.devices[self.rank], self.devices[op.peer]
                shaper.submit(op.peer, src, dst, nbytes, deferred.post, True)
                works.append(deferred)
            return works

        return shaped

    def finish(self) -> None:
        """Wait for the sends still on the emulated links."""
        if self.shaper is not None:
            self.shaper.close(self.timeout_s)
        for send in self.sends:
            send.finish()

    def metrics(self, scale: float, microbatches: int) -> dict[str, Any]:
        fwd, loss, bwd, opt = (self.segments[name] for name in SEGMENTS)
        per_mb_s = fwd.device_s + loss.device_s + bwd.device_s
        return {
            "busy_s": sum(s.stretch.busy_wall_s for s in self.segments.values()) / scale,
            "overrun_s": sum(s.stretch.overrun_wall_s for s in self.segments.values()) / scale,
            "predicted_forward_s": fwd.device_s,
            "predicted_backward_s": bwd.device_s,
            "predicted_optimizer_s": opt.device_s,
            "predicted_loss_s": loss.device_s,
            "predicted_step_s": microbatches * per_mb_s + opt.device_s,
            "host_forward_s": fwd.reference_s(),
            "host_backward_s": bwd.reference_s(),
            "bytes_sent": self.bytes_sent,
        }


def start_train_emulation(
    config: PeerTrainConfig, emulation: _TrainEmulation, control: Any, cpu_step_s: float
) -> float:
    """Dilation (agreed across the ranks), segment factors and link shaper, after the warm-up;
    ``cpu_step_s``: this rank's CPU seconds (all threads) per training step."""
    segments = list(emulation.segments.values())
    if not config.emulate:
        for segment in segments:
            segment.start_stream(None)
        return 1.0
    assert config.cluster is not None and config.ledger_path
    cluster = Cluster.from_json(config.cluster)
    device = cluster.device(config.devices[emulation.rank])
    for segment in segments:
        segment.device_s = stage_time_s(device, segment.ops or [])
    fwd, loss, bwd, opt = (emulation.segments[name] for name in SEGMENTS)
    per_mb_s = fwd.device_s + loss.device_s + bwd.device_s
    step_s = config.microbatches * per_mb_s + opt.device_s  # the rank's device time
    # every segment must be slowed down, never sped up: the largest host over device time
    need = max(s.reference_s() / max(s.device_s, 1e-12) for s in segments if s.ops)
    busy_wall = sum(s.stretch.busy_wall_s for s in segments)
    busy_cpu = sum(s.stretch.busy_cpu_s for s in segments)
    inflation = busy_wall / busy_cpu if busy_cpu else 1.0
    scale = agree_dilation(
        need * step_s, step_s, inflation, cpu_step_s, len(config.devices), control,
        config.time_scale,
    )  # fmt: skip
    for segment in segments:
        segment.start_stream(scale)
    keys = resource_keys(cluster.network, config.devices)
    emulation.shaper = LinkShaper(
        cluster.network, MediumLedger(config.ledger_path, keys), scale, emulation.rank
    )
    return scale
