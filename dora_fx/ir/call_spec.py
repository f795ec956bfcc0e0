"""``CallSpec``: the call a model was compiled for, so a compiled model takes and returns exactly
what the model does: how a call flattens (the captured pytree ``in_spec``), how outputs
unflatten (``out_spec``), and what each flattened input must be (``InputSpec``: a tensor of
this rank and dtype whose fixed sizes are the compiled ones; ``batch``/``seq`` may vary).

Every runtime checks a call here before any stage runs (on a rank a wrong input would fail
mid-run, in a reshape far from the cause). Its JSON form is what plan.json keeps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..errors import InputError, PlanFolderError

__all__ = ["CallSpec", "InputSpec"]


@dataclass(frozen=True)
class InputSpec:
    """One flattened tensor input: rank, dtype, its batch dim (None: static) and its compiled
    shape (ints are fixed; strings are expressions in ``batch``/``seq`` that may vary)."""

    ndim: int
    dtype: torch.dtype
    batch_dim: int | None
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "ndim": self.ndim,
            "dtype": str(self.dtype),
            "batch_dim": self.batch_dim,
            "shape": list(self.shape),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        return cls(data["ndim"], _dtype(data["dtype"]), data.get("batch_dim"), tuple(data["shape"]))

    def check(self, position: int, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            raise InputError(f"input {position}: expected a Tensor, got {type(value).__name__}")
        if value.dim() != self.ndim or value.dtype != self.dtype:
            raise InputError(
                f"input {position}: expected a {self.ndim}-d {self.dtype} tensor, got a "
                f"{value.dim()}-d {value.dtype} tensor of shape {tuple(value.shape)}"
            )
        for dim, (want, got) in enumerate(zip(self.shape, value.shape)):
            if isinstance(want, int) and want != got:
                raise InputError(
                    f"input {position}: dimension {dim} has size {got}, but the plan was "
                    f"compiled for shape [{', '.join(map(str, self.shape))}] (named dimensions "
                    f"may vary, numbers may not); build the input at those sizes or compile "
                    f"the model again for this one"
                )


@dataclass(frozen=True)
class CallSpec:
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    inputs: tuple[InputSpec | None, ...]  # per flattened input; None: not a tensor

    @property
    def batch_dims(self) -> list[int | None]:
        return [None if i is None else i.batch_dim for i in self.inputs]

    def flatten(self, args: tuple[Any, ...], kwargs: dict[str, Any], check: bool = True) -> list[Any]:
        """Flatten a call the way the model was captured, and (``check``) check every tensor;
        say precisely what differs if it does not fit."""
        expected_kwargs = _kwarg_names(self.in_spec)
        if set(kwargs) == set(expected_kwargs):
            kwargs = {k: kwargs[k] for k in expected_kwargs}  # captured order
        flat, spec = pytree.tree_flatten((tuple(args), kwargs))
        if spec != self.in_spec:
            raise InputError(
                "inputs do not match those the model was compiled with:\n"
                f"  expected {_describe(self.in_spec)}\n  got      {_describe(spec)}"
            )
        if check:
            self.check(flat)
        return flat

    def check(self, flat: Sequence[Any]) -> None:
        """Raise ``InputError`` for the first flattened input that is not what the plan was
        compiled for."""
        for position, (value, spec) in enumerate(zip(flat, self.inputs)):
            if spec is not None:
                spec.check(position, value)

    def unflatten(self, outputs: list[Any]) -> Any:
        return pytree.tree_unflatten(outputs, self.out_spec)

    def batch_size(self, flat: Sequence[Any]) -> int | None:
        """Rows of a flattened call: the size of the first tensor's batch dim (None: static)."""
        for value, dim in zip(flat, self.batch_dims):
            if dim is not None and isinstance(value, torch.Tensor):
                return int(value.shape[dim])
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "in_spec": pytree.treespec_dumps(self.in_spec),
            "out_spec": pytree.treespec_dumps(self.out_spec),
            "inputs": [None if i is None else i.to_json() for i in self.inputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallSpec:
        return cls(
            _load_spec(data["in_spec"]),
            _load_spec(data["out_spec"]),
            tuple(None if i is None else InputSpec.from_json(i) for i in data["inputs"]),
        )


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
        keywords = list(kwargs_spec.context or [])
        return f"{args_spec.num_leaves} positional input(s) and keyword inputs {keywords}"
    except (ValueError, AttributeError):
        return str(spec)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise PlanFolderError(f"unknown dtype {name!r} in plan.json")
    return dtype


def _load_spec(text: str) -> pytree.TreeSpec:
    """Output containers of types this process does not know (a transformers ModelOutput when
    transformers is not imported) come back as plain dicts with the same keys."""
    try:
        return pytree.treespec_loads(text)
    except Exception:  # noqa: BLE001 - unknown container type
        protocol, tree = json.loads(text)
        return pytree.treespec_loads(json.dumps([protocol, _known_types_only(tree)]))


def _known_types_only(node: dict[str, Any]) -> dict[str, Any]:
    known = {"builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict", None}
    kind = node["type"]
    if kind not in known and kind not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
        kind = "builtins.dict"
    return {
        "type": kind,
        "context": node["context"],
        "children_spec": [_known_types_only(c) for c in node["children_spec"]],
    }
