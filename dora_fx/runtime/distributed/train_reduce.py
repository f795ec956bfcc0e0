"""Distributed training, gradient reduction (the schedule's REDUCE): every model parameter's
gradient summed over the ranks that hold it.

A parameter is held by every rank of every stage that reads it: the members of a
data-parallel stage (each computed the gradient of its rows' share of the loss: the loss on
the last stage is weighted by the member's rows over the batch, so the sum *is* the reduction
by shares), and the stages of a tied weight (GPT-2's token embedding on the first stage and its
LM head on the last: the sum of both uses' gradients, as autograd sums them in one process).
So one rule covers both: ranks are grouped by the set of ranks holding each parameter, a
process group per distinct set of two or more ranks (created by every rank in the same order,
as ``torch.distributed.new_group`` requires), and REDUCE all-reduces (sum) one flat buffer of
the gradients per group, groups in one global order so overlapping groups cannot deadlock.
Tied weights are therefore summed by an all-reduce over the ranks that hold them, not by a
send/recv pair. On CUDA ranks the groups are NCCL (written, not run here); gloo otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .wiring import StageWiring

__all__ = ["GradientGroups", "holder_sets"]


def holder_sets(
    wiring: StageWiring, stage_keys: Sequence[Mapping[str, str]]
) -> dict[tuple[int, ...], list[str]]:
    """Rank set -> the model keys exactly those ranks hold (sets of two or more ranks), sorted.
    ``stage_keys``: per stage, its attribute -> model key."""
    holders: dict[str, set[int]] = {}
    for stage, keys in enumerate(stage_keys):
        ranks = {r.rank for r in wiring.ranks_of(stage)}
        for key in keys.values():
            holders.setdefault(key, set()).update(ranks)
    sets: dict[tuple[int, ...], list[str]] = {}
    for key, ranks in sorted(holders.items()):
        if len(ranks) > 1:
            sets.setdefault(tuple(sorted(ranks)), []).append(key)
    return dict(sorted(sets.items()))


class GradientGroups:
    """This rank's reductions (see the module doc). Every rank constructs it (collective)."""

    def __init__(
        self,
        rank: int,
        wiring: StageWiring,
        stage_keys: Sequence[Mapping[str, str]],
        params: Mapping[str, torch.nn.Parameter],
        timeout: timedelta,
        device: torch.device,
    ) -> None:
        """``params``: this rank's parameters by model key."""
        backend = "nccl" if device.type == "cuda" else "gloo"
        self.reductions: list[tuple[Any, list[torch.nn.Parameter]]] = []
        for ranks, keys in holder_sets(wiring, stage_keys).items():
            group = dist.new_group(ranks=list(ranks), backend=backend, timeout=timeout)
            mine = [params[k] for k in keys if k in params]
            if rank in ranks and mine:
                self.reductions.append((group, mine))

    @property
    def count(self) -> int:
        return len(self.reductions)

    def reduce(self) -> None:
        """REDUCE: sum each group's gradients over its ranks (a missing gradient counts 0)."""
        for group, params in self.reductions:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            start = 0
            for p in params:
                n = p.numel()
                p.grad = flat[start : start + n].view_as(p).clone()
                start += n
