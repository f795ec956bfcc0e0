"""Pass 2, annotate_costs: every node gets one ``NodeCost`` in ``node.meta["dora.cost"]``.

Costs are sympy expressions in the dynamic dims (``batch``, ``seq``), computed from the
FakeTensor values export leaves in ``node.meta["val"]``: the FLOP formulas run directly on
SymInt shapes and return SymInts whose ``.node.expr`` is the expression. ``compile_costs`` turns
any list of expressions into one numpy function, so re-planning for a new batch is one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy
import torch
import torch.fx
import torch.utils._pytree as pytree

from ...cost_models.op_costs import (
    dense_flops,
    is_memory_only,
    is_misaligned_gemm,
    is_view,
    numel,
    op_name,
    other_flops,
)
from ...ir.cost import COST_KEY, NodeCost
from ..capture import BATCH, SEQ
from .annotate_backward import annotate_backward

__all__ = ["annotate_costs", "compile_costs", "node_cost", "CostSymbols", "ZERO"]

ZERO = sympy.Integer(0)


@dataclass(frozen=True)
class CostSymbols:
    """The sympy symbols costs are written in, and how export's symbols map onto them."""

    batch: sympy.Symbol
    seq: sympy.Symbol
    rename: dict[sympy.Symbol, sympy.Symbol]

    @classmethod
    def from_names(cls, names: dict[str, str]) -> CostSymbols:
        batch = sympy.Symbol(BATCH, positive=True, integer=True)
        seq = sympy.Symbol(SEQ, positive=True, integer=True)
        ours = {BATCH: batch, SEQ: seq}
        rename = {
            sympy.Symbol(graph_name, positive=True, integer=True): ours[our_name]
            for graph_name, our_name in names.items()
        }
        return cls(batch, seq, rename)

    def expr(self, value: Any) -> sympy.Expr:
        if isinstance(value, torch.SymInt):
            raw = value.node.expr
            return raw.xreplace({s: self.rename.get(_plain(s), s) for s in raw.free_symbols})
        return sympy.Integer(int(value))


def _plain(symbol: sympy.Symbol) -> sympy.Symbol:
    return sympy.Symbol(symbol.name, positive=True, integer=True)


def annotate_costs(
    gm: torch.fx.GraphModule, symbols: CostSymbols, batch_scale: sympy.Expr | None = None
) -> list[str]:
    """Annotate every node; return the names of ops that have no FLOP formula.

    ``batch_scale`` multiplies the data-dependent costs of graphs captured with static shapes
    (the symbolic_trace fallback): their costs are then assumed linear in the batch.
    """
    missing: list[str] = []
    for node in gm.graph.nodes:
        cost = node_cost(node, symbols)
        if batch_scale is not None:
            cost = NodeCost(
                cost.flops * batch_scale, cost.bytes_moved * batch_scale,
                cost.output_bytes * batch_scale, cost.param_bytes, cost.op_class, cost.has_formula,
                cost.misaligned_flops * batch_scale,
            )
        node.meta[COST_KEY] = cost
        if not cost.has_formula:
            missing.append(op_name(node.target))
    annotate_backward(gm)
    return sorted(set(missing))


def node_cost(node: torch.fx.Node, symbols: CostSymbols) -> NodeCost:
    out = node.meta.get("val")
    if node.op in ("placeholder", "output"):
        return NodeCost(ZERO, ZERO, _bytes(out, symbols), ZERO, "view")
    if node.op == "get_attr":
        size = _bytes(out, symbols)
        return NodeCost(ZERO, ZERO, size, size, "view")
    name = op_name(node.target)
    args, kwargs = pytree.tree_map_only(torch.fx.Node, _val, (node.args, node.kwargs))
    param_bytes = sum(
        (_bytes(arg.meta.get("val"), symbols) for arg in node.all_input_nodes if arg.op == "get_attr"),
        ZERO,
    )
    out_bytes = _bytes(out, symbols)
    if is_view(name):
        return NodeCost(ZERO, ZERO, out_bytes, param_bytes, "view")
    flops = dense_flops(node.target, args, kwargs, out)
    op_class = "dense"
    if flops is None:
        flops, op_class = other_flops(name, args, out), "other"
    in_bytes = sum((_bytes(v, symbols) for v in pytree.tree_leaves((args, kwargs))), ZERO)
    if name in ("embedding", "index", "index_select", "gather"):
        # reads only the selected rows, not the whole table
        in_bytes = out_bytes + sum(
            (_bytes(v, symbols) for v in pytree.tree_leaves(args[1:])), ZERO
        )
    has_formula = flops is not None
    flops_expr = symbols.expr(flops) if has_formula else ZERO
    return NodeCost(
        flops=flops_expr,
        bytes_moved=in_bytes + out_bytes,
        output_bytes=out_bytes,
        param_bytes=param_bytes,
        op_class=op_class if not is_memory_only(name) else "other",
        has_formula=has_formula,
        misaligned_flops=flops_expr if is_misaligned_gemm(name, out) else ZERO,
    )


def _val(node: torch.fx.Node) -> Any:
    return node.meta.get("val")


def _bytes(value: Any, symbols: CostSymbols) -> sympy.Expr:
    total = ZERO
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            total += symbols.expr(numel(leaf)) * leaf.element_size()
    return total


def compile_costs(
    exprs: Sequence[sympy.Expr], symbols: CostSymbols
) -> Callable[..., np.ndarray]:
    """One compiled numpy function for many expressions: ``f(batch, seq) -> array``."""
    fn = sympy.lambdify((symbols.batch, symbols.seq), list(exprs), modules="numpy")

    def evaluate(batch: float, seq: float = 1.0, /) -> np.ndarray:
        return np.asarray(fn(batch, seq), dtype=np.float64).reshape(len(exprs))

    return evaluate
