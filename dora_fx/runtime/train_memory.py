"""What training needs in memory on each device of a plan: weights, gradients, optimizer state
and the activations of the microbatches in flight.

Weights and gradients are the stage module's own tensors (every parameter and buffer; a
gradient per trainable parameter). Optimizer state is ``train_costs.OPTIMIZERS[name]`` copies of the
trainable parameters (AdamW: the two moments; SGD: none, with momentum one). Activations are
measured, not guessed: one microbatch of the example runs forward through the stages in
training mode and a saved-tensors hook adds up the bytes of every tensor autograd keeps for the
backward (each storage once; the weights themselves excluded), attributed to the stage that
computed it (the buffers are put back after, so batch norm's running statistics do not move);
the figure is scaled to the plan's microbatch rows. Under 1F1B stage ``k`` of
``S`` holds ``min(M, S - k)`` microbatches' activations at once (GPipe: all ``M``); a
data-parallel member holds its share of the rows.

``check_fits`` raises ``InfeasibleQoEError`` naming the device, its stage and each part.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from ..cost_models.cluster import Cluster
from ..cost_models.train_costs import OPTIMIZERS
from ..errors import InfeasibleQoEError
from .local import LocalPipeline

__all__ = ["StageMemory", "training_memory", "check_fits"]


@dataclass(frozen=True)
class StageMemory:
    """Training memory of one device of one stage, in bytes."""

    stage: int
    device: str
    weights: float
    grads: float
    optimizer: float
    activations: float  # of the microbatches in flight
    in_flight: int
    capacity: float  # the device's memory

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"stage {self.stage} on {self.device}: weights {_size(self.weights)} + grads "
            f"{_size(self.grads)} + optimizer {_size(self.optimizer)} + activations "
            f"{_size(self.activations)} ({self.in_flight} microbatch(es) in flight) = "
            f"{_size(self.total)} of {_size(self.capacity)}"
        )


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


def training_memory(
    pipeline: LocalPipeline,
    example_flat: list[Any],
    cluster: Cluster,
    batch: int,
    optimizer: str = "adamw",
    schedule: str = "1f1b",
) -> list[StageMemory]:
    """Each device's training memory for ``batch`` rows under the pipeline's schedule."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    saved = _saved_bytes(pipeline, example_flat)
    example_rows = pipeline.call.batch_size(example_flat) or 1
    m = pipeline.schedule.microbatches
    rows_per_microbatch = batch / m
    count = len(pipeline.stages)
    out = []
    for stage in pipeline.stages:
        tensors = [*stage.module.parameters(), *stage.module.buffers()]
        weights = float(sum(t.numel() * t.element_size() for t in tensors))
        trainable = float(
            sum(p.numel() * p.element_size() for p in stage.module.parameters() if p.requires_grad)
        )
        in_flight = m if schedule == "gpipe" else min(m, count - stage.index)
        per_microbatch = saved.get(stage.index, 0.0) * rows_per_microbatch / example_rows
        for device, share in zip(stage.devices, stage.shares):
            out.append(
                StageMemory(
                    stage.index, device, weights, trainable,
                    OPTIMIZERS[optimizer] * trainable, share * per_microbatch * in_flight,
                    in_flight, cluster.device(device).memory_bytes,
                )
            )  # fmt: skip
    return out


def check_fits(memory: list[StageMemory], optimizer: str) -> None:
    """Raise ``InfeasibleQoEError`` for the first device whose training memory exceeds it."""
    for item in memory:
        if item.total > item.capacity:
            raise InfeasibleQoEError(
                f"training does not fit device {item.device!r} ({optimizer}): "
                f"{item.describe()}; use more stages or devices, fewer microbatches in flight, "
                "a smaller batch, or an optimizer with less state (sgd)"
            )


def _saved_bytes(pipeline: LocalPipeline, flat: list[Any]) -> dict[int, float]:
    """Bytes autograd saves per stage for one microbatch of ``flat`` (see the module doc)."""
    weights = {
        t.untyped_storage().data_ptr()
        for s in pipeline.stages
        for t in [*s.module.parameters(), *s.module.buffers()]
    }
    seen: set[int] = set()
    saved: dict[int, float] = defaultdict(float)
    current: list[int] = [-1]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and key not in weights:
            seen.add(key)
            saved[current[0]] += storage.nbytes()
        return tensor

    buffers = [b for s in pipeline.stages for b in s.module.buffers()]
    before = [b.detach().clone() for b in buffers]  # batch norm updates its running stats
    pipeline.on_compute = lambda stage: current.__setitem__(0, stage)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            pipeline.run_flat(flat, microbatches=1)
    finally:
        pipeline.on_compute = None
        with torch.no_grad():
            for buffer, value in zip(buffers, before, strict=True):
                buffer.copy_(value)
    return dict(saved)
