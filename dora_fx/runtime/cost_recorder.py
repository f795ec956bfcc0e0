"""A stage's op costs, recorded as its forward runs, for device emulation.

A rank counts the FLOPs and bytes of every ATen op of its stage once (``CostRecorder``)
and prices them with the roofline (``Device.node_time_s``) on its device (``stage_time_s``):
the device time ``compute_emulation`` stretches the stage's compute to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ..cost_models.device import Device
from ..cost_models.op_costs import dense_flops, is_misaligned_gemm, is_view, op_name, other_flops

__all__ = ["OpCost", "CostRecorder", "stage_time_s"]

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
