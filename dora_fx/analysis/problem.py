"""The abstract planning problem: a chain of blocks with numeric costs, a cluster, a QoE.

Blocks come from the coarsen pass (a traced graph) or are written by hand, so the planner,
the simulator and the baselines can be exercised without a model. Every figure is for the
problem's ``batch`` (the coarsen pass evaluates its sympy expressions at that batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..cost_models.cluster import Cluster
from ..cost_models.train_costs import OPTIMIZERS
from ..errors import PlanError
from ..ir.train_schedule import TRAIN_POLICIES
from ..qoe import QoE

__all__ = ["Block", "Problem", "TrainingSpec"]


@dataclass(frozen=True)
class Block:
    """A contiguous run of graph nodes, costed at the problem's batch.

    ``flops``: all FLOPs; ``dense_flops``: the part in matmul/conv/attention (defaults to all);
    ``bytes``: memory traffic (operands read + results written); ``out_bytes``: bytes of the
    live tensors that cross the cut after this block (what a stage boundary here sends);
    ``param_bytes``: weights and buffers the block reads; ``ops``: node count, for per-op
    overhead; ``name``: where it came from (a module path), for explain(); ``dense_bytes``:
    the part of ``bytes`` moved by dense nodes (None: price the block with one roofline);
    ``misaligned_flops``: the part of ``dense_flops`` in matrix multiplies whose output rows
    are not whole 32-byte vectors (priced at ``Device.misaligned_dense_efficiency``).

    Training (``cost_models.train_costs``, filled by annotate_costs / coarsen; zero in a block
    written for inference, where nothing reads them): ``backward_flops`` /
    ``backward_dense_flops`` / ``backward_bytes`` / ``backward_dense_bytes`` the block's
    backward work (priced like the forward: one roofline per class when the dense bytes are
    known), ``backward_ops`` its kernels (None: as many as ``ops``), ``grad_tensors`` the
    trainable weights it reads (the optimizer step's tensors),
    ``activation_bytes`` what autograd keeps for it per batch (scaled by the rows a device
    holds), ``grad_bytes`` the gradients of its trainable weights.
    """

    flops: float
    bytes: float
    out_bytes: float
    param_bytes: float = 0.0
    dense_flops: float | None = None
    ops: int = 1
    name: str = ""
    dense_bytes: float | None = None  # bytes moved by the dense nodes: one roofline per class
    misaligned_flops: float = 0.0
    backward_flops: float = 0.0
    backward_dense_flops: float | None = None
    backward_bytes: float = 0.0
    backward_dense_bytes: float | None = None
    backward_ops: int | None = None
    grad_tensors: int = 0
    activation_bytes: float = 0.0
    grad_bytes: float = 0.0

    def __post_init__(self) -> None:
        for key in (
            "flops", "bytes", "out_bytes", "param_bytes", "backward_flops", "backward_bytes",
            "activation_bytes", "grad_bytes",
        ):  # fmt: skip
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise PlanError(f"block {self.name or '?'}: {key} must be >= 0, got {value!r}")

    @property
    def dense(self) -> float:
        return self.flops if self.dense_flops is None else self.dense_flops

    @property
    def backward_kernels(self) -> int:
        return self.ops if self.backward_ops is None else self.backward_ops

    @property
    def backward_dense(self) -> float:
        if self.backward_dense_flops is None:
            return self.backward_flops
        return self.backward_dense_flops


@dataclass(frozen=True)
class TrainingSpec:
    """What makes a Problem a training one. ``optimizer``: whose state each device holds
    (``cost_models.train_costs.OPTIMIZERS``: adamw 2x the trainable bytes, sgd-momentum 1x,
    sgd none); ``schedule`` (``gpipe`` / ``1f1b``) and ``microbatches`` pin the pipeline
    schedule, None lets the planner choose them by simulation."""

    optimizer: str = "adamw"
    schedule: str | None = None
    microbatches: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise PlanError(
                f"TrainingSpec.optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.schedule is not None and self.schedule not in TRAIN_POLICIES:
            raise PlanError(
                f"TrainingSpec.schedule must be one of {TRAIN_POLICIES} or None, got {self.schedule!r}"
            )
        m = self.microbatches
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise PlanError(f"TrainingSpec.microbatches must be a positive int or None, got {m!r}")


@dataclass(frozen=True)
class Problem:
    """Blocks to place on a cluster under a QoE. ``source``: the device requests come from (the
    input is sent from there to the first stage); ``sink``: the device the results must reach
    (sent there from the last stage). Both default to the QoE's, then the cluster's
    ``source``; a source of None means the first stage's first device holds the input, a sink
    of None that results stay where they are computed.

    ``training``: a training problem (``TrainingSpec``); None (the default) is inference and
    everything about it is as it was. A training iteration has no sink: the loss is computed
    on the last stage."""

    blocks: tuple[Block, ...]
    cluster: Cluster
    qoe: QoE = field(default_factory=QoE)
    batch: int = 1
    input_bytes: float = 0.0
    source: str | None = None
    sink: str | None = None
    training: TrainingSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise PlanError("a Problem needs at least one block")
        for role in ("source", "sink"):
            name = getattr(self, role)
            if name is None:
                name = getattr(self.qoe, role) or self.cluster.source
                object.__setattr__(self, role, name)
            if name is None:
                continue
            if name not in self.cluster:
                raise PlanError(
                    f"{role} device {name!r} is not in cluster {self.cluster.name!r} "
                    f"(devices: {self.cluster.device_names}); name one of them"
                )
