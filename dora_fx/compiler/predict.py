"""Predicted compute time of a whole model on a device, from its captured graph: the sum of its
nodes' rooflines (``Device.node_time_s``) at a batch. The calibration benchmark checks the
cost model with it against measured forward passes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..cost_models.device import Device

__all__ = ["annotated_graph", "predict_graph_s", "predict_forward_s"]


def annotated_graph(
    model: torch.nn.Module, example_inputs: tuple[Any, ...]
) -> tuple[Any, Any, int]:
    """Capture ``model`` and annotate its node costs (``pipeline.front_end``): ``(graph
    module, cost symbols, batch)``."""
    from .pipeline import front_end

    state = front_end(model, example_inputs)
    assert state.captured is not None
    return state.captured.gm, state.symbols, state.captured.example_batch


def predict_graph_s(
    gm: Any, symbols: Any, device: Device, batch: int, seq: int = 1
) -> dict[str, float]:
    """Seconds per op class (``dense``, ``other``) of one run of an annotated graph on
    ``device``: the sum of its nodes' roofline times at ``batch`` (and ``seq``)."""
    from ..ir.cost import COST_KEY
    from .passes.annotate_costs import compile_costs

    costs = [n.meta[COST_KEY] for n in gm.graph.nodes if COST_KEY in n.meta]
    costs = [c for c in costs if c.op_class in ("dense", "other")]
    exprs = [
        e
        for c in costs
        for e in (c.flops, c.bytes_moved, c.output_bytes, c.misaligned_flops)
    ]
    values = compile_costs(exprs, symbols)(float(batch), float(seq)).reshape(len(costs), 4)
    by_class = {"dense": 0.0, "other": 0.0}
    for cost, (f, q, o, mis) in zip(costs, values, strict=True):
        by_class[cost.op_class] += device.node_time_s(
            float(f), float(q), cost.op_class, float(o), float(mis)
        )
    return by_class


def predict_forward_s(
    model: torch.nn.Module, example_inputs: tuple[Any, ...], device: Device
) -> float:
    """Predicted time of one forward pass of ``model`` at the example inputs' sizes."""
    gm, symbols, batch = annotated_graph(model, example_inputs)
    return sum(predict_graph_s(gm, symbols, device, batch).values())
