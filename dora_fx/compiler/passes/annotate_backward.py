"""Part of annotate_costs: every node's training costs (``cost_models.train_costs``).

Which values need a gradient is propagated through the graph: a trainable parameter (a
``get_attr`` of an ``nn.Parameter`` with ``requires_grad``) does, user inputs do not, and a
node's floating output does when any of its inputs does. Each node's ``NodeCost`` gets its
``backward_flops`` / ``backward_bytes`` (and a trainable weight its ``grad_bytes``), and
``node.meta[SAVED_KEY]`` lists the nodes whose outputs autograd keeps for its backward.

Fan-out: a value that ``k > 1`` nodes differentiate through gets its gradient summed from
``k`` parts, ``k - 1`` adds of its size in the backward (the residual stream of every
transformer block, a weight tied to two uses). They are the producer's: ``(k - 1)`` times one
FLOP per element and three tensors moved (both addends read, the sum written); on GPT-2 they
were a fifth of the backward's non-GEMM traffic.
"""

from __future__ import annotations

import operator
from dataclasses import replace

import torch
import torch.fx

from ...cost_models.op_costs import op_name
from ...cost_models.train_costs import backward_costs, backward_kernels, saved_operands
from ...ir.cost import COST_KEY, SAVED_KEY, NodeCost

__all__ = ["annotate_backward"]


def _trainable(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    try:
        param = gm.get_parameter(str(node.target))
    except AttributeError:
        return False
    return bool(param.requires_grad and param.is_floating_point())


def _floating(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return val.is_floating_point()
    if isinstance(val, (tuple, list)):
        return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in val)
    return False


def annotate_backward(gm: torch.fx.GraphModule) -> None:
    """Add the training costs to every node's ``NodeCost`` (see the module docstring)."""
    needs: dict[torch.fx.Node, bool] = {}
    for node in gm.graph.nodes:
        cost: NodeCost | None = node.meta.get(COST_KEY)
        if node.op == "get_attr":
            needs[node] = _trainable(gm, node)
            if needs[node] and cost is not None:
                node.meta[COST_KEY] = replace(cost, grad_bytes=cost.output_bytes)
            continue
        if node.op in ("placeholder", "output") or cost is None:
            needs[node] = False
            continue
        inputs = node.all_input_nodes
        acts = [a for a in inputs if a.op != "get_attr" and needs.get(a, False)]
        weight_grad = any(a.op == "get_attr" and needs.get(a, False) for a in inputs)
        input_grad = bool(acts)
        needs[node] = (input_grad or weight_grad) and _floating(node)
        name = op_name(node.target)
        flops, moved = backward_costs(
            name, cost.op_class, cost.flops, cost.bytes_moved, cost.output_bytes,
            input_grad=input_grad, weight_grad=weight_grad, activation_operands=len(acts),
        )  # fmt: skip
        kernels = backward_kernels(
            name, cost.op_class, input_grad=input_grad, weight_grad=weight_grad,
            activation_operands=len(acts), bias=_has_bias(name, node),
        )  # fmt: skip
        node.meta[COST_KEY] = replace(
            cost, backward_flops=flops, backward_bytes=moved, backward_ops=kernels
        )
        what = saved_operands(name, cost.op_class, weight_grad=weight_grad, input_grad=input_grad)
        saved: list[torch.fx.Node] = []
        if "inputs" in what:
            saved += [a for a in inputs if a.op != "get_attr" and _floating(a)]
        if "output" in what:
            saved.append(node)
        node.meta[SAVED_KEY] = tuple(saved)
    _add_fan_out(gm, needs)


def _add_fan_out(gm: torch.fx.GraphModule, needs: dict[torch.fx.Node, bool]) -> None:
    """The gradient sums of values with several differentiating users (module docstring)."""
    for node in gm.graph.nodes:
        cost: NodeCost | None = node.meta.get(COST_KEY)
        if cost is None or not needs.get(node, False):
            continue
        users = [u for u in node.users if needs.get(u, False) and u.target is not operator.getitem]
        if len(users) < 2:
            continue
        adds = len(users) - 1
        node.meta[COST_KEY] = replace(
            cost,
            backward_flops=cost.backward_flops + adds * cost.output_bytes / 4,
            backward_bytes=cost.backward_bytes + adds * 3 * cost.output_bytes,
            backward_ops=cost.backward_ops + adds,
        )


def _has_bias(name: str, node: torch.fx.Node) -> bool:
    if name in ("addmm", "baddbmm"):
        return True
    return name == "linear" and len(node.args) > 2 and node.args[2] is not None
