"""A stage graph read as the schedule sees it: cut into *segments* at its communication points
(a segment starts where a received value is first needed and ends after a value another stage
waits for is produced), and one microbatch's *steps* (recv, compute segment, send) in program
order. ``ir.lowering`` turns steps into a ``Schedule``; this module is the only part of the
schedule IR that reads an FX graph."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from .comm_ops import RECV, SEND
from .lowering import Step

__all__ = ["segments", "stage_steps"]



def _is_work(node: torch.fx.Node) -> bool:
    return node.op in ("call_function", "call_method", "call_module") and node.target not in (
        RECV,
        SEND,
    )


def segments(graph: torch.fx.Graph, split: bool = True) -> list[list[torch.fx.Node]]:
    """The graph's nodes (output excluded) cut into segments: a new segment starts at a
    receive once the current one has work or sends, and at work after a send. With
    ``split=False``, one segment (data-parallel stages run whole)."""
    cut: list[list[torch.fx.Node]] = [[]]
    has_work = has_send = False
    for node in graph.nodes:
        if node.op == "output":
            continue
        if split and (
            (node.target is RECV and (has_work or has_send)) or (_is_work(node) and has_send)
        ):
            cut.append([])
            has_work = has_send = False
        cut[-1].append(node)
        has_work |= _is_work(node)
        has_send |= node.target is SEND
    return cut


def _nbytes(value: Any) -> int:
    if not isinstance(value, torch.Tensor):
        return 8
    numel = 1
    for size in value.shape:
        numel *= _hint(size)
    return numel * value.element_size()


def _hint(size: Any) -> int:
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return int(hint) if hint is not None else 1
    return int(size)


def _int(value: Any) -> int:
    assert isinstance(value, int)
    return value


def _val(arg: Any) -> Any:
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg


def stage_steps(graph: torch.fx.Graph, split: bool = True) -> list[Step]:
    steps = []
    for k, segment in enumerate(segments(graph, split)):
        steps += [
            Step("recv", _int(n.kwargs["tag"]), _int(n.kwargs["peer"]))
            for n in segment
            if n.target is RECV
        ]
        steps.append(Step("compute", k))
        steps += [
            Step("send", _int(n.kwargs["tag"]), _int(n.kwargs["peer"]), _nbytes(_val(n.args[0])))
            for n in segment
            if n.target is SEND
        ]
    return steps


# -- lowering -------------------------------------------------------------------------------


