"""In-process runtime: run every stage in order in this process, passing tensors through the
send/recv nodes with a mailbox. It returns exactly what the model returns, same pytree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..comm_ops import Mailbox, use_transport
from ..errors import InputError
from .data_parallel import run_replicated, split_sizes

__all__ = ["StageModule", "LocalPipeline", "flatten_inputs"]


@dataclass
class StageModule:
    """One stage as the runtimes see it: a module, its wiring, and its readable source."""

    index: int
    module: torch.nn.Module
    input_indices: list[int]
    output_indices: list[int]
    devices: tuple[str, ...]
    code: str = ""
    node_names: list[str] = field(default_factory=list)
    # sends / recvs / outputs with dtype, shape and batch dim (see insert_comm.stage_transfers)
    transfers: dict[str, Any] = field(default_factory=dict)
    shares: tuple[float, ...] = (1.0,)  # batch shares of a data-parallel group, one per device

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.module.state_dict().values())


def flatten_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], in_spec: pytree.TreeSpec
) -> list[Any]:
    """Flatten a call the way the model was captured; say precisely what differs if it does not fit."""
    expected_kwargs = _kwarg_names(in_spec)
    if set(kwargs) == set(expected_kwargs):
        kwargs = {k: kwargs[k] for k in expected_kwargs}  # captured order
    flat, spec = pytree.tree_flatten((tuple(args), kwargs))
    if spec != in_spec:
        raise InputError(
            "inputs do not match those the model was compiled with:\n"
            f"  expected {_describe(in_spec)}\n  got      {_describe(spec)}"
        )
    return flat


def _kwarg_names(in_spec: pytree.TreeSpec) -> list[str]:
    try:
        return list(_children(in_spec)[1].context or [])
    except (IndexError, AttributeError):
        return []


def _children(spec: pytree.TreeSpec) -> list[pytree.TreeSpec]:
    children = getattr(spec, "children", None)
    return list(children()) if callable(children) else list(spec.children_specs)


def _describe(spec: pytree.TreeSpec) -> str:
    try:
        args_spec, kwargs_spec = _children(spec)
        return f"{args_spec.num_leaves} positional input(s) and keyword inputs {list(kwargs_spec.context or [])}"
    except (ValueError, AttributeError):
        return str(spec)


class LocalPipeline:
    """Calls stages one after another; a stage's sends land in a mailbox its receivers read."""

    def __init__(
        self,
        stages: Sequence[StageModule],
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        input_meta: Sequence[tuple[int, torch.dtype] | None] = (),
        input_batch_dims: Sequence[int | None] = (),
    ) -> None:
        self.stages = list(stages)
        self.in_spec, self.out_spec = in_spec, out_spec
        self.input_meta = list(input_meta)
        self.input_batch_dims = list(input_batch_dims) or [None] * len(self.input_meta)
        self.num_outputs = sum(len(s.output_indices) for s in self.stages)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = flatten_inputs(args, kwargs, self.in_spec)
        self._check_tensors(flat)
        outputs: list[Any] = [None] * self.num_outputs
        mailbox = Mailbox()
        with torch.no_grad(), use_transport(mailbox):
            for stage in self.stages:
                mailbox.stage = stage.index
                if len(stage.shares) > 1:
                    produced = self._run_data_parallel(stage, flat, mailbox)
                else:
                    produced = stage.module(*[flat[i] for i in stage.input_indices])
                for index, value in zip(stage.output_indices, produced):
                    outputs[index] = value
        if mailbox.pending:
            raise RuntimeError(f"values sent but never received: {mailbox.pending}")
        return pytree.tree_unflatten(outputs, self.out_spec)

    def _run_data_parallel(self, stage: StageModule, flat: list[Any], mailbox: Mailbox) -> list[Any]:
        batch = self._batch_size(flat)
        if batch is None:
            raise InputError(
                f"stage {stage.index} is data-parallel over {', '.join(stage.devices)} but the "
                "model was captured with a static batch, so its batch cannot be split"
            )
        received = {
            (r["peer"], r["tag"]): mailbox.take(r["peer"], stage.index, r["tag"])
            for r in stage.transfers.get("recvs", [])
        }
        sent, outputs = run_replicated(
            stage.module,
            [flat[i] for i in stage.input_indices],
            [self.input_batch_dims[i] for i in stage.input_indices],
            received,
            stage.transfers,
            split_sizes(batch, stage.shares),
        )
        for (peer, tag), tensor in sent.items():
            mailbox.send(tensor, peer, tag)
        return outputs

    def _batch_size(self, flat: list[Any]) -> int | None:
        for value, dim in zip(flat, self.input_batch_dims):
            if dim is not None and isinstance(value, torch.Tensor):
                return int(value.shape[dim])
        return None

    def _check_tensors(self, flat: list[Any]) -> None:
        for position, (value, meta) in enumerate(zip(flat, self.input_meta)):
            if meta is None:
                continue
            ndim, dtype = meta
            if not isinstance(value, torch.Tensor):
                raise InputError(f"input {position}: expected a Tensor, got {type(value).__name__}")
            if value.dim() != ndim or value.dtype != dtype:
                raise InputError(
                    f"input {position}: expected a {ndim}-d {dtype} tensor, got a "
                    f"{value.dim()}-d {value.dtype} tensor of shape {tuple(value.shape)}"
                )
