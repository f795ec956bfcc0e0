"""The IR verifier run between passes when ``DORA_DEBUG=1``.

Checks: every graph lints; every compute node of the source graph is in exactly one stage;
every recv has exactly one matching send on the stage it names, and every send a recv.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import torch.fx

from ..comm_ops import RECV, SEND
from ..errors import VerificationError

if TYPE_CHECKING:
    from ..pipeline import CompileState

__all__ = ["verify_state", "verify_stages"]


def verify_state(state: CompileState, after: str) -> None:
    if state.captured is not None:
        _lint(state.captured.gm.graph, f"the captured graph (after {after})")
    if state.programs and state.chain is not None:
        verify_stages(
            [p.gm.graph for p in state.programs],
            [p.node_names for p in state.programs],
            [n.name for n in state.chain.nodes],
            after,
        )


def verify_stages(
    graphs: list[torch.fx.Graph],
    placed: list[list[str]],
    compute_nodes: list[str],
    after: str = "insert_comm",
) -> None:
    for index, graph in enumerate(graphs):
        _lint(graph, f"stage {index} (after {after})")
    counts = Counter(name for names in placed for name in names)
    missing = [n for n in compute_nodes if counts[n] == 0]
    repeated = [n for n, c in counts.items() if c > 1]
    if missing or repeated:
        raise VerificationError(
            f"after {after}: every compute node must be in exactly one stage; "
            f"missing: {missing[:10]}, in several stages: {repeated[:10]}"
        )
    sends: Counter[tuple[int, int, int]] = Counter()
    recvs: Counter[tuple[int, int, int]] = Counter()
    for index, graph in enumerate(graphs):
        for node in graph.nodes:
            if node.target is SEND:
                sends[(index, node.kwargs["peer"], node.kwargs["tag"])] += 1
            elif node.target is RECV:
                recvs[(node.kwargs["peer"], index, node.kwargs["tag"])] += 1
    if sends != recvs:
        unmatched_sends = sorted((sends - recvs).elements())
        unmatched_recvs = sorted((recvs - sends).elements())
        raise VerificationError(
            f"after {after}: send/recv mismatch (src, dst, tag): sends without a recv "
            f"{unmatched_sends[:10]}, recvs without a send {unmatched_recvs[:10]}"
        )


def _lint(graph: torch.fx.Graph, what: str) -> None:
    try:
        graph.lint()
    except Exception as exc:
        raise VerificationError(f"{what} fails Graph.lint(): {exc}") from exc
