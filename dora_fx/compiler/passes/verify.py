"""The IR verifier run between passes when ``DORA_DEBUG=1``.

Checks: every graph lints; every compute node of the source graph is in exactly one stage;
every recv has exactly one matching send on the stage it names, and every send a recv. Once
``schedule_comm`` has run, the schedule too (``verify_schedule``): every stage's actions cover
its graph (each segment computed once per microbatch, in order; each recv posted then waited,
each send started then waited, once per microbatch), no segment uses a value before its WAIT,
no SEND before the segment producing it, every WAIT has exactly one matching SEND on its peer
and the reverse, and running all stages' actions together (rendezvous sends) cannot deadlock.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import torch.fx

from ...errors import VerificationError
from ...ir.comm_ops import RECV, SEND
from ...ir.execute import execute
from ...ir.schedule import Action, Kind, Schedule, ScheduleError
from ...ir.stage_graph import segments

if TYPE_CHECKING:
    from ..state import CompileState

__all__ = ["verify_state", "verify_stages", "verify_schedule"]


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
    if state.schedule is not None and state.plan is not None:
        verify_schedule(
            state.schedule,
            [p.gm.graph for p in state.programs],
            [len(state.plan.stages[p.index].devices) == 1 for p in state.programs],
            after,
        )


def verify_schedule(
    schedule: Schedule, graphs: list[torch.fx.Graph], split: list[bool], after: str = "schedule_comm"
) -> None:
    if len(schedule.stages) != len(graphs):
        raise VerificationError(
            f"after {after}: the schedule has {len(schedule.stages)} stages, the plan {len(graphs)}"
        )
    for stage, graph, cut in zip(schedule.stages, graphs, split):
        _check_stage_actions(stage.stage, list(stage.actions), segments(graph, cut),
                             schedule.microbatches, after)
    _check_matching(schedule, after)
    try:
        execute(schedule)
    except ScheduleError as exc:
        raise VerificationError(f"after {after}: {exc}") from None


def _check_stage_actions(
    stage: int, actions: list[Action], segs: list[list[torch.fx.Node]], m: int, after: str
) -> None:
    def fail(what: str) -> None:
        raise VerificationError(f"after {after}: stage {stage}'s schedule: {what}")

    recv_segment = {_ends(n): k for k, seg in enumerate(segs) for n in seg if n.target is RECV}
    send_segment = {_ends(n): k for k, seg in enumerate(segs) for n in seg if n.target is SEND}
    recvs, sends = list(recv_segment), list(send_segment)
    expected = Counter(
        [(Kind.POST, mb, t, p) for mb in range(m) for t, p in recvs]
        + [(Kind.WAIT, mb, t, p) for mb in range(m) for t, p in recvs]
        + [(Kind.SEND, mb, t, p) for mb in range(m) for t, p in sends]
        + [(Kind.SENT, mb, t, p) for mb in range(m) for t, p in sends]
        + [(Kind.COMPUTE, mb, k, -1) for mb in range(m) for k in range(len(segs))]
    )
    got = Counter((a.kind, a.mb, a.index, a.peer) for a in actions)
    if got != expected:
        extra = sorted(str(Action(*key)) for key in (got - expected).elements())
        missing = sorted(str(Action(*key)) for key in (expected - got).elements())
        fail(f"expected every segment, recv and send once per microbatch; "
             f"missing {missing[:8]}, unexpected or repeated {extra[:8]}")
    seen: set[tuple[Kind, int, int, int]] = set()
    computed: dict[int, int] = {}  # microbatch -> segments done
    for a in actions:
        if a.kind is Kind.WAIT and (Kind.POST, a.mb, a.index, a.peer) not in seen:
            fail(f"{a} waits for a receive it has not posted")
        if a.kind is Kind.SENT and (Kind.SEND, a.mb, a.index, a.peer) not in seen:
            fail(f"{a} waits for a send it has not started")
        if a.kind is Kind.SEND and computed.get(a.mb, 0) <= send_segment[(a.index, a.peer)]:
            fail(f"{a} sends before segment F{send_segment[(a.index, a.peer)]} produced it")
        if a.kind is Kind.COMPUTE:
            if a.index != computed.get(a.mb, 0):
                fail(f"{a} runs out of order: segment {computed.get(a.mb, 0)} of microbatch "
                     f"{a.mb} is next")
            for (tag, peer), k in recv_segment.items():
                if k == a.index and (Kind.WAIT, a.mb, tag, peer) not in seen:
                    fail(f"{a} uses tag {tag} from stage {peer} before {a.mb}WAIT{tag}<{peer}")
            computed[a.mb] = a.index + 1
        seen.add((a.kind, a.mb, a.index, a.peer))


def _ends(node: torch.fx.Node) -> tuple[int, int]:
    tag, peer = node.kwargs["tag"], node.kwargs["peer"]
    assert isinstance(tag, int) and isinstance(peer, int)
    return tag, peer


def _check_matching(schedule: Schedule, after: str) -> None:
    sends: Counter[tuple[int, int, int, int]] = Counter()
    waits: Counter[tuple[int, int, int, int]] = Counter()
    for stage in schedule.stages:
        for a in stage.actions:
            if a.kind is Kind.SEND:
                sends[(stage.stage, a.peer, a.index, a.mb)] += 1
            elif a.kind is Kind.WAIT:
                waits[(a.peer, stage.stage, a.index, a.mb)] += 1
    if sends != waits or any(c != 1 for c in sends.values()):
        raise VerificationError(
            f"after {after}: schedule SEND/WAIT mismatch (src, dst, tag, microbatch): sends "
            f"without a wait {sorted((sends - waits).elements())[:8]}, waits without a send "
            f"{sorted((waits - sends).elements())[:8]}, repeated "
            f"{sorted(k for k, c in (sends + waits).items() if c > 2)[:8]}"
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
