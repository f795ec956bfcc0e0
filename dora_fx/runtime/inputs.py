"""What a call or a request must be: flattened like the captured call, each tensor of the
compiled rank, dtype and fixed sizes. Every runtime checks inputs here, before any stage runs
(on a rank a wrong input fails mid-run, in a reshape far from the cause)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..errors import InputError
from ..ir.batch_split import batch_rows

__all__ = ["flatten_inputs", "check_input_tensors", "check_requests", "args_kwargs"]


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


def check_input_tensors(
    flat: Sequence[Any],
    input_meta: Sequence[tuple[int, torch.dtype] | None],
    input_shapes: Sequence[Sequence[int | str] | None],
) -> None:
    """Raise ``InputError`` for the first flattened input that is not what the plan was
    compiled for: a tensor of the same rank and dtype whose fixed dimensions (ints in
    ``input_shapes``; ``batch``/``seq`` expressions may vary) have the compiled sizes."""
    for position, (value, meta, shape) in enumerate(zip(flat, input_meta, input_shapes)):
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
        for dim, (want, got) in enumerate(zip(shape or (), value.shape)):
            if isinstance(want, int) and want != got:
                raise InputError(
                    f"input {position}: dimension {dim} has size {got}, but the plan was "
                    f"compiled for shape [{', '.join(map(str, shape or ()))}] (named dimensions "
                    f"may vary, numbers may not); build the input at those sizes or compile "
                    f"the model again for this one"
                )


def check_requests(
    checks: tuple[list[Any], list[Any]],
    flat_requests: Iterable[tuple[int, list[Any]]],
    microbatches: int = 1,
    hint: str = "",
) -> None:
    """Refuse, before any rank starts, a request whose inputs are not what the plan was
    compiled for (on a rank it would fail mid-run, in a reshape far from the cause), or that
    has fewer rows than the schedule's ``microbatches``. ``checks``:
    ``artifact.input_checks`` of the plan's manifest; ``hint`` ends the rows message."""
    meta, shapes = checks
    for request_id, flat in flat_requests:
        try:
            check_input_tensors(flat, meta, shapes)
        except InputError as exc:
            raise InputError(f"request {request_id}: {exc}") from None
        rows = batch_rows(flat)
        if microbatches > 1 and 0 < rows < microbatches:
            raise InputError(
                f"request {request_id} has {rows} rows, fewer than the schedule's "
                f"{microbatches} microbatches; send at least {microbatches} rows per request"
                f"{hint}"
            )


def args_kwargs(request: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(request, tuple) and len(request) == 2 and isinstance(request[1], dict):
        return tuple(request[0]), request[1]
    if isinstance(request, (tuple, list)):
        return tuple(request), {}
    return (request,), {}

