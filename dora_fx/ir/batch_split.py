"""The one batch split every runtime uses: which rows of a batch each member of a
data-parallel group (or each microbatch) gets.

Largest remainder (Hamilton's method): member ``i`` of a group with shares ``s`` gets
``floor(b * s_i / sum(s))`` rows, and the rows left over go one each to the members with the
largest fractional parts, ties to the earlier member. The sizes sum to ``b``, each is within one
row of its exact share, and equal shares give sizes that differ by at most one (earlier members
first). A member may get no rows (batch 2 over shares 0.9 and 0.1 gives [2, 0]); it then sits
that batch out: it computes nothing, and its peers neither send it rows nor wait for its
rows. Rows are contiguous and in member order: member ``i`` holds rows
``[sum(sizes[:i]), sum(sizes[:i+1]))`` (``row_bounds``).

The planner's shares are whole rows of the plan's batch (``planner.space.group_shares``), so at
that batch the split is exactly the planned one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["split_sizes", "row_bounds", "batch_rows"]


def split_sizes(batch: int, shares: Sequence[float]) -> list[int]:
    """Rows per member, summing to ``batch``, by largest remainder (see the module doc)."""
    if batch < 0:
        raise ValueError(f"cannot split a batch of {batch} rows")
    if not shares or any(not math.isfinite(s) or s < 0 for s in shares) or sum(shares) <= 0:
        raise ValueError(f"shares must be non-negative, finite and not all 0, got {list(shares)}")
    total = sum(shares)
    exact = [batch * s / total for s in shares]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: batch - sum(sizes)]:
        sizes[i] += 1
    return sizes


def row_bounds(batch: int, shares: Sequence[float]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each member's rows."""
    bounds, start = [], 0
    for size in split_sizes(batch, shares):
        bounds.append((start, start + size))
        start += size
    return bounds


def batch_rows(flat: Sequence[Any]) -> int:
    """Rows of a request: the first dim of its first tensor with dims (0 if none)."""
    for value in flat:
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    return 0
