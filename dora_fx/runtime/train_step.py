"""One training step in this process: forward and backward over the microbatches.

``train_step`` cuts the call into the schedule's microbatches with the one batch split
(``ir.batch_split``), and for each runs the forward through every stage (the schedule
relowered for one microbatch), applies ``loss_fn(output, target)`` to that microbatch and
runs its backward at once, so only one microbatch's activations are alive at a time (1F1B's
memory, in one process). Each microbatch's loss is weighted by its share of the rows, so for a
loss that averages over the batch (``reduction="mean"``, as torch.nn losses do by default) the
sum is the un-split loss and the gradients are the un-split gradients. Gradients accumulate in
the stages' parameters (tied weights are one parameter: ``runtime.weights``); the caller steps
its optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..errors import InputError
from ..ir.batch_split import split_sizes
from .data_parallel import slice_along
from .local import LocalPipeline

__all__ = ["train_step"]

LossFn = Callable[[Any, Any], torch.Tensor]


def train_step(
    pipeline: LocalPipeline,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: Any,
    loss_fn: LossFn,
    microbatches: int | None = None,
) -> torch.Tensor:
    """Forward and backward of one batch (see the module doc); returns the batch's loss."""
    if not torch.is_grad_enabled():
        raise InputError("train_step needs autograd: it was called under torch.no_grad()")
    flat = pipeline.call.flatten(args, kwargs)
    batch = pipeline.call.batch_size(flat)
    if batch is None:
        raise InputError("train_step needs inputs with a batch dim to cut into microbatches")
    _check_target(target, batch)
    m = max(1, min(pipeline.schedule.microbatches if microbatches is None else microbatches, batch))
    dims = pipeline.call.batch_dims
    total = torch.zeros(())
    start = 0
    for size in split_sizes(batch, [1.0] * m):
        piece = [slice_along(x, d, start, size) for x, d in zip(flat, dims)]
        output = pipeline.call.unflatten(pipeline.run_flat(piece, microbatches=1))
        loss = loss_fn(output, _rows(target, batch, start, size))
        _check_loss(loss)
        weighted = loss * (size / batch)
        weighted.backward()
        total = total + weighted.detach()
        start += size
    return total


def _rows(target: Any, batch: int, start: int, size: int) -> Any:
    def cut(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == batch:
            return t.narrow(0, start, size)
        return t

    return pytree.tree_map(cut, target)


def _check_target(target: Any, batch: int) -> None:
    for leaf in pytree.tree_leaves(target):
        if isinstance(leaf, torch.Tensor) and leaf.dim() and leaf.shape[0] != batch:
            raise InputError(
                f"target has {leaf.shape[0]} rows (shape {tuple(leaf.shape)}) but the inputs "
                f"have a batch of {batch}; give one target row per input row"
            )


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise InputError(
            f"loss_fn must return a scalar tensor (e.g. reduction='mean'), got {shape}; "
            "average over the batch so microbatches add up to the batch's loss"
        )
    if not loss.requires_grad:
        raise InputError(
            "loss_fn returned a loss with no gradient: the compiled model's weights do not need "
            "grad (compile with mode='train', and do not detach the outputs in loss_fn)"
        )
