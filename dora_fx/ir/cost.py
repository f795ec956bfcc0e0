"""The per-node cost record ``annotate_costs`` writes into ``node.meta[COST_KEY]``."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

__all__ = ["COST_KEY", "SAVED_KEY", "NodeCost"]

COST_KEY = "dora.cost"
SAVED_KEY = "dora.saved"


@dataclass(frozen=True)
class NodeCost:
    """Cost of one FX node as sympy expressions in the dynamic dims (``batch``, ``seq``).

    ``op_class`` is ``dense`` (matmul / conv / attention: compute-bound on most devices),
    ``other`` (elementwise, normalization, reductions: memory-bound), or ``view`` (free:
    reshapes, getitem, shape queries). ``has_formula`` is False when no FLOP formula exists for
    the op; its FLOPs are then 0 and explain() lists it. ``misaligned_flops`` is ``flops``
    for a matrix multiply whose output rows are not a whole number of 32-byte vectors (its
    kernel runs slower: ``Device.misaligned_dense_efficiency``), else 0.

    Training (``cost_models.train_costs``; zero for a node with nothing to differentiate):
    ``backward_flops`` and ``backward_bytes`` of the node's backward, ``backward_ops`` the
    kernels it launches (for the per-op overhead), ``grad_bytes`` the
    gradient a trainable weight (a ``get_attr`` of a parameter) gets. What the node saves for
    its backward is ``node.meta[SAVED_KEY]``: the nodes whose outputs autograd keeps.
    """

    flops: sympy.Expr
    bytes_moved: sympy.Expr
    output_bytes: sympy.Expr
    param_bytes: sympy.Expr
    op_class: str
    has_formula: bool = True
    misaligned_flops: sympy.Expr = sympy.Integer(0)
    backward_flops: sympy.Expr = sympy.Integer(0)
    backward_bytes: sympy.Expr = sympy.Integer(0)
    backward_ops: int = 0
    grad_bytes: sympy.Expr = sympy.Integer(0)
