"""AOTAutograd's backward graph cut at the forward's stage boundaries: one graph per stage.

The backward graph's inputs are the tensors the forward saved for it, the forward's inputs it
kept (weights, the user's tensors) and the tangents (gradients of the forward's outputs); its
outputs are the gradients of the forward's inputs. ``assign_stages`` puts each backward node on
a stage:

- a saved tensor is *held* by the stage that computed it in the forward and by every stage
  that received it there; weights, the user's tensors and tangents are held by every stage;
- a node is placed on the latest stage that is no later than the stage of any backward value it
  reads (those are computed first: stages run last to first) and at which each saved tensor it
  reads is held, when one is: a layer's backward runs where its forward ran, reading its own
  saved tensors and the gradient the next stage sent;
- a node that reads only values every stage holds (a weight's transpose, a tangent's sum) runs
  on the latest stage among its users; a gradient of a weight nobody else reads, on the stage
  that reads the weight in the forward.

``split_backward`` then builds one GraphModule per stage (its inputs: the backward's inputs and
the later stages' values it reads; its outputs: the values earlier stages read and the
gradients it produces), and ``SplitBackward`` runs them from the last stage to the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

__all__ = ["BackwardSplitError", "BackwardStage", "SplitBackward", "assign_stages", "split_backward"]

Key = str  # a value of the backward graph, by its node's name


class BackwardSplitError(ValueError):
    """The backward graph cannot be cut at the forward's stages (said why); the backward then
    runs as one graph."""


def assign_stages(
    graph: torch.fx.Graph,
    home: Mapping[torch.fx.Node, int],
    held_by: Mapping[str, frozenset[int]],
    output_stages: Sequence[int | None],
    num_stages: int,
) -> dict[torch.fx.Node, int]:
    """The stage of each compute node of the backward ``graph`` (see the module doc).
    ``home``: the stage of the forward op a node is the backward of, where known;
    ``held_by``: the stages holding each saved tensor, by placeholder name (a placeholder not
    named is held by every stage); ``output_stages``: per output of the graph, the stage that
    reads that input in the forward (None: the last)."""
    last = num_stages - 1
    stage: dict[torch.fx.Node, int | None] = {}
    computed = [n for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    for node in computed:
        stage[node] = _forward_place(node, stage, home.get(node), held_by, last)
    (output,) = [n for n in graph.nodes if n.op == "output"]
    output_stage: dict[torch.fx.Node, int] = {}
    for value, wanted in zip(_flat(output.args[0]), output_stages, strict=True):
        if isinstance(value, torch.fx.Node):
            output_stage[value] = max(output_stage.get(value, 0), last if wanted is None else wanted)
    for node in reversed(computed):
        if stage[node] is None:
            users = [stage[u] for u in node.users if u in stage]
            if node in output_stage:
                users.append(output_stage[node])
            stage[node] = max((s for s in users if s is not None), default=last)
    placed = {node: s for node, s in stage.items() if s is not None}
    _check_order(placed)
    return placed


def _forward_place(
    node: torch.fx.Node,
    stage: Mapping[torch.fx.Node, int | None],
    home: int | None,
    held_by: Mapping[str, frozenset[int]],
    last: int,
) -> int | None:
    inputs = node.all_input_nodes
    later = [s for m in inputs if m in stage and (s := stage[m]) is not None]
    if home is not None:
        return min([home, *later])
    saved = [held_by[m.name] for m in inputs if m.op == "placeholder" and m.name in held_by]
    if not later and not saved:
        return None  # only values every stage holds: placed by its users
    bound = min(later, default=last)
    choices = [max((h for h in holders if h <= bound), default=bound) for holders in saved]
    return min([bound, *choices])


def _check_order(stage: Mapping[torch.fx.Node, int]) -> None:
    for node, s in stage.items():
        for m in node.all_input_nodes:
            if m in stage and stage[m] < s:
                raise BackwardSplitError(
                    f"node {node.name} (stage {s}) reads {m.name} of the earlier stage {stage[m]}"
                )


@dataclass
class BackwardStage:
    """One stage's share of the backward: ``gm`` takes ``inputs`` and returns ``outputs``
    (values of the backward graph, by name)."""

    index: int
    gm: torch.fx.GraphModule
    inputs: list[Key]
    outputs: list[Key]
    ops: int
    reads_saved_of: frozenset[int]  # stages whose saved tensors it reads (not its own)


def split_backward(
    gm: torch.fx.GraphModule,
    stage: Mapping[torch.fx.Node, int],
    num_stages: int,
    held_by: Mapping[str, frozenset[int]],
) -> SplitBackward:
    """``gm`` as one GraphModule per stage (``assign_stages``'s ``stage``), run last to first."""
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    returned = {v for v in _flat(output.args[0]) if isinstance(v, torch.fx.Node)}
    stages = []
    for s in reversed(range(num_stages)):
        mine = [n for n in gm.graph.nodes if stage.get(n) == s]
        wanted = [
            n for n in mine if n in returned or any(stage.get(u, s) < s for u in n.users)
        ]
        stages.append(_stage_module(gm, s, mine, wanted, held_by))
    return SplitBackward(stages, [n.name for n in gm.graph.nodes if n.op == "placeholder"],
                         list(output.args[0]))  # fmt: skip


def _stage_module(
    gm: torch.fx.GraphModule,
    index: int,
    mine: list[torch.fx.Node],
    wanted: list[torch.fx.Node],
    held_by: Mapping[str, frozenset[int]],
) -> BackwardStage:
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    inputs: list[Key] = []
    own = set(mine)
    for node in mine:
        for m in node.all_input_nodes:
            if m.op == "get_attr" and m not in env:
                env[m] = graph.node_copy(m)
            elif m not in own and m not in env:
                env[m] = graph.placeholder(m.name)
                env[m].meta = dict(m.meta)
                inputs.append(m.name)
        env[node] = graph.node_copy(node, env.__getitem__)
    graph.output(tuple(env[n] for n in wanted))
    foreign = {
        h
        for name in inputs
        if name in held_by and index not in held_by[name]
        for h in held_by[name]
    }
    return BackwardStage(
        index, torch.fx.GraphModule(gm, graph, class_name=f"BackwardStage{index}"), inputs,
        [n.name for n in wanted], len(mine), frozenset(foreign),
    )  # fmt: skip


class SplitBackward:
    """The backward's stages, called like the backward graph (``make_boxed_func`` makes it
    AOTAutograd's boxed callable)."""

    def __init__(self, stages: list[BackwardStage], input_names: list[Key], outputs: list[Any]) -> None:
        self.stages = stages  # last stage first: the order they run in
        self.input_names = input_names
        self.outputs = outputs

    def __call__(self, *args: Any) -> list[Any]:
        values: dict[Key, Any] = dict(zip(self.input_names, args, strict=True))
        for stage in self.stages:
            produced = stage.gm(*[values[k] for k in stage.inputs])
            values.update(zip(stage.outputs, produced, strict=True))
        return [values[v.name] if isinstance(v, torch.fx.Node) else v for v in self.outputs]

    def describe(self, devices: Sequence[str]) -> str:
        used = [s for s in self.stages if s.ops]
        if len(used) == 1:
            (only,) = used
            text = (
                f"backward: on stage {only.index} ({devices[only.index]}) only, {only.ops} ops "
                "(the other stages computed nothing that needs a gradient)"
            )
        else:
            names = ", ".join(devices[s.index] for s in reversed(used))
            text = f"backward: split over {len(used)} stages ({names}): " + ", then ".join(
                f"stage {s.index} ({devices[s.index]}) {s.ops} ops" for s in used
            )
        crossing = [s for s in used if s.reads_saved_of]
        if crossing:
            text += "; " + "; ".join(
                f"stage {s.index} reads saved tensors of stage(s) {sorted(s.reads_saved_of)}"
                for s in crossing
            )
        return text


def _flat(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (tuple, list)) else [value]
