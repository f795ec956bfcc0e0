"""Pass 3, coarsen: the graph's compute nodes, in topological order, become a chain of blocks.

The partitioner sees tens of blocks instead of thousands of nodes. A block boundary is a *valid
cut*: every value live across it is a tensor (sent as is) or a shape integer (recomputed on the
other side or sent as a 0-d tensor); tuples such as split()'s result never cross. Among valid
cuts we prefer module boundaries (from ``nn_module_stack``), at the deepest module level that
keeps the chain under ``max_blocks``, and thin out further by spreading blocks evenly by FLOPs.
Every block keeps its node range, so any block plan maps back to nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sympy
import torch
import torch.fx

from ...analysis.problem import Block
from ...ir.cost import COST_KEY, SAVED_KEY, NodeCost
from .annotate_costs import ZERO, CostSymbols, compile_costs

__all__ = ["SymBlock", "BlockChain", "coarsen", "placed_nodes", "crossing_values"]


@dataclass(frozen=True)
class SymBlock:
    """Nodes ``[node_start, node_stop)`` of the placed order, costs as sympy expressions."""

    index: int
    node_start: int
    node_stop: int
    name: str
    flops: sympy.Expr
    dense_flops: sympy.Expr
    bytes_moved: sympy.Expr
    dense_bytes: sympy.Expr
    misaligned_flops: sympy.Expr  # dense FLOPs of GEMMs with misaligned rows (see NodeCost)
    out_bytes: sympy.Expr  # live tensors crossing the cut after this block (last: the outputs)
    param_bytes: sympy.Expr
    ops: int  # nodes that cost time (views and shape queries are free)
    backward_ops: int  # kernels the backward launches (train_costs.backward_kernels)
    grad_tensors: int  # trainable weights read (the optimizer's tensors)
    # training (annotate_backward): backward work, activations autograd saves, weight gradients
    backward_flops: sympy.Expr = ZERO
    backward_dense_flops: sympy.Expr = ZERO
    backward_bytes: sympy.Expr = ZERO
    backward_dense_bytes: sympy.Expr = ZERO
    activation_bytes: sympy.Expr = ZERO
    grad_bytes: sympy.Expr = ZERO


@dataclass
class BlockChain:
    nodes: list[torch.fx.Node]  # compute nodes in placed (topological) order
    blocks: list[SymBlock]
    symbols: CostSymbols
    input_bytes: sympy.Expr

    def __post_init__(self) -> None:
        fields = (
            "flops", "dense_flops", "bytes_moved", "out_bytes", "param_bytes", "dense_bytes",
            "misaligned_flops", "backward_flops", "backward_dense_flops", "backward_bytes",
            "activation_bytes", "grad_bytes", "backward_dense_bytes",
        )  # fmt: skip
        exprs = [getattr(b, f) for b in self.blocks for f in fields] + [self.input_bytes]
        self._evaluate = compile_costs(exprs, self.symbols)

    def at(self, batch: int, seq: int = 1) -> tuple[list[Block], float]:
        """Numeric blocks (and input bytes) at a batch size: one compiled call."""
        values = self._evaluate(batch, seq)
        rows = values[:-1].reshape(len(self.blocks), 13)
        blocks = [
            Block(
                flops=float(row[0]), dense_flops=float(row[1]), bytes=float(row[2]),
                out_bytes=float(row[3]), param_bytes=float(row[4]), dense_bytes=float(row[5]),
                misaligned_flops=float(row[6]), ops=b.ops, name=b.name,
                backward_ops=b.backward_ops, grad_tensors=b.grad_tensors,
                backward_flops=float(row[7]), backward_dense_flops=float(row[8]),
                backward_bytes=float(row[9]), activation_bytes=float(row[10]),
                grad_bytes=float(row[11]), backward_dense_bytes=float(row[12]),
            )
            for b, row in zip(self.blocks, rows)
        ]
        return blocks, float(values[-1])

    def block_of_node(self) -> dict[torch.fx.Node, int]:
        return {
            node: block.index
            for block in self.blocks
            for node in self.nodes[block.node_start : block.node_stop]
        }


def placed_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """Nodes that a stage computes. Inputs and weights are not placed: each stage that uses
    one gets its own placeholder or copy."""
    return [n for n in graph.nodes if n.op in ("call_function", "call_method", "call_module")]


def crossing_values(nodes: Sequence[torch.fx.Node]) -> list[list[torch.fx.Node]]:
    """``result[i]``: nodes defined at positions <= i and used at positions > i."""
    position = {node: i for i, node in enumerate(nodes)}
    last_use = {
        node: max((position[u] for u in node.users if u in position), default=-1)
        for node in nodes
    }
    live: dict[torch.fx.Node, None] = {}
    result = []
    for i, node in enumerate(nodes):
        if last_use[node] > i:
            live[node] = None
        for gone in [n for n in live if last_use[n] <= i]:
            del live[gone]
        result.append(list(live))
    return result


def _is_sendable(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, (torch.Tensor, torch.SymInt, int))


def _module_path(node: torch.fx.Node, depth: int) -> tuple[str, ...]:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values()]
    return tuple(paths[:depth])


def coarsen(
    gm: torch.fx.GraphModule, symbols: CostSymbols, max_blocks: int = 100
) -> BlockChain:
    nodes = placed_nodes(gm.graph)
    crossing = crossing_values(nodes)
    valid = [
        i for i in range(len(nodes) - 1) if all(_is_sendable(v) for v in crossing[i])
    ]
    node_flops = compile_costs([n.meta[COST_KEY].flops for n in nodes], symbols)(1.0)
    cuts = _module_cuts(nodes, valid, max_blocks)
    if len(cuts) + 1 > max_blocks:
        cuts = _even_cuts(cuts, max_blocks, node_flops)
    cuts = _merge_negligible(cuts, node_flops)
    bounds = [0] + [c + 1 for c in cuts] + [len(nodes)]
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    # after the last block, what "crosses" is the model's output (to whoever asked for it)
    results = [v for v in output.args[0] if isinstance(v, torch.fx.Node) and v.op != "get_attr"]
    blocks = [
        _make_block(k, nodes, start, stop, crossing[stop - 1] if stop < len(nodes) else results)
        for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    input_bytes = sum(
        (n.meta[COST_KEY].output_bytes for n in gm.graph.nodes if n.op == "placeholder"), ZERO
    )
    return BlockChain(nodes, blocks, symbols, input_bytes)


def _module_cuts(nodes: list[torch.fx.Node], valid: list[int], max_blocks: int) -> list[int]:
    best = valid if len(valid) < max_blocks else []
    for depth in range(1, 8):
        cuts = [i for i in valid if _module_path(nodes[i], depth) != _module_path(nodes[i + 1], depth)]
        if len(cuts) + 1 > max_blocks:
            break
        best = cuts if len(cuts) >= len(best) or len(valid) >= max_blocks else best
    return best or valid


def _merge_negligible(cuts: list[int], node_flops: np.ndarray, fraction: float = 1e-5) -> list[int]:
    """Drop cuts that would close a block doing almost nothing (shape arithmetic, position ids):
    such a block is worthless as a stage and only tempts the planner into an idle hop."""
    total = float(node_flops.sum()) or 1.0
    kept, start = [], 0
    for cut in cuts:
        if node_flops[start : cut + 1].sum() >= fraction * total:
            kept.append(cut)
            start = cut + 1
    if kept and node_flops[start:].sum() < fraction * total:
        kept.pop()  # the last block is negligible: merge it into the one before
    return kept


def _even_cuts(cuts: list[int], max_blocks: int, flops: np.ndarray) -> list[int]:
    """Keep the candidate cuts nearest to evenly spaced FLOP quantiles."""
    cumulative = np.cumsum(flops + 1.0)  # +1: spread FLOP-free runs by node count too
    at_cut = cumulative[cuts]
    targets = cumulative[-1] * np.arange(1, max_blocks) / max_blocks
    chosen = sorted({cuts[int(np.argmin(np.abs(at_cut - t)))] for t in targets})
    return chosen


def _make_block(
    index: int, nodes: list[torch.fx.Node], start: int, stop: int, live: list[torch.fx.Node]
) -> SymBlock:
    costs: list[NodeCost] = [n.meta[COST_KEY] for n in nodes[start:stop]]
    weights = {
        arg for n in nodes[start:stop] for arg in n.all_input_nodes if arg.op == "get_attr"
    }
    paths = [p for n in nodes[start:stop] if (p := _module_path(n, 99))]
    # a tensor saved for the backward by several nodes of the block is kept once
    saved = {s: None for n in nodes[start:stop] for s in n.meta.get(SAVED_KEY, ())}
    return SymBlock(
        index=index,
        node_start=start,
        node_stop=stop,
        name=paths[0][-1] if paths else nodes[start].name,
        flops=sum((c.flops for c in costs), ZERO),
        dense_flops=sum((c.flops for c in costs if c.op_class == "dense"), ZERO),
        bytes_moved=sum((c.bytes_moved for c in costs), ZERO),
        dense_bytes=sum((c.bytes_moved for c in costs if c.op_class == "dense"), ZERO),
        misaligned_flops=sum((c.misaligned_flops for c in costs), ZERO),
        out_bytes=sum((v.meta[COST_KEY].output_bytes for v in live), ZERO),
        param_bytes=sum((w.meta[COST_KEY].output_bytes for w in weights), ZERO),
        ops=sum(c.op_class != "view" for c in costs),
        backward_ops=sum(c.backward_ops for c in costs),
        grad_tensors=sum(w.meta[COST_KEY].grad_bytes != 0 for w in weights),
        backward_flops=sum((c.backward_flops for c in costs), ZERO),
        backward_dense_flops=sum((c.backward_flops for c in costs if c.op_class == "dense"), ZERO),
        backward_bytes=sum((c.backward_bytes for c in costs), ZERO),
        backward_dense_bytes=sum((c.backward_bytes for c in costs if c.op_class == "dense"), ZERO),
        activation_bytes=sum((s.meta[COST_KEY].output_bytes for s in saved), ZERO),
        grad_bytes=sum((w.meta[COST_KEY].grad_bytes for w in weights), ZERO),
    )
