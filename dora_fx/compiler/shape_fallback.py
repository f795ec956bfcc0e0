"""Fallback capture for plain modules that torch.export rejects.

``symbolic_trace`` first: it refuses data-dependent Python control flow, so a graph it accepts is
valid for every input of the traced shapes. The traced module is then lowered to ATen ops by
running it once on the example inputs under ``make_fx`` (real tensors, so ops that lack a fake
kernel still work), which also records every node's output in ``meta["val"]``: the same graph
shape the export path produces, with static sizes.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["trace_with_shapes"]


def trace_with_shapes(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.fx.GraphModule, pytree.TreeSpec, pytree.TreeSpec]:
    traced = torch.fx.symbolic_trace(model)
    flat_inputs, in_spec = pytree.tree_flatten((args, kwargs))
    out_spec: list[pytree.TreeSpec] = []

    def flat_forward(*flat: Any) -> list[Any]:
        call_args, call_kwargs = pytree.tree_unflatten(list(flat), in_spec)
        leaves, spec = pytree.tree_flatten(traced(*call_args, **call_kwargs))
        out_spec.append(spec)
        return leaves

    with torch.no_grad():
        gm = make_fx(flat_forward, tracing_mode="real")(*flat_inputs)
    _name_inputs_and_weights(gm, model)
    return gm, in_spec, out_spec[0]


def _name_inputs_and_weights(gm: torch.fx.GraphModule, model: torch.nn.Module) -> None:
    """make_fx names weights ``_param_constant0``; give them their state_dict names back."""
    by_ptr = {
        t.data_ptr(): key
        for key, t in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
    }
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        tensor = getattr(gm, node.target)
        key = by_ptr.get(tensor.data_ptr())
        if key is None:
            continue
        name = re.sub(r"\W", "_", key)
        if not hasattr(gm, name):
            gm.register_buffer(name, tensor.detach())
            delattr(gm, node.target)
            node.target = name
            node._rename(name)
    gm.recompile()
