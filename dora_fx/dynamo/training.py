"""A Dynamo graph trained through AOTAutograd: the forward planned, the backward cut alike.

``aot_autograd`` traces the graph's forward and backward as ATen graphs and splits them
(``min_cut_rematerialization_partition``: it saves fewer activations and recomputes cheap ops
in the backward). Its forward graph returns the user's outputs, then what the backward needs:
tensors it computed (activations), forward inputs it kept (weights, the user's tensors) and
sizes. ``TrainingGraph.forward_compiler`` compiles that forward with ``dora_fx.compile`` (the
same passes as any model; the saved tensors are outputs like the others, each returned by
the stage that computed it), on the first call as the inference path does. The forward's
inputs are Dynamo's, one for one, so ``lift`` reads which are weights off Dynamo's graph.
``backward_compiler`` then cuts the backward at the forward's stages (``backward``: each stage
backpropagates through its own layers with its own saved tensors and the gradient the next
stage sends) and runs the stages from the last to the first. A forward dora_fx cannot compile
runs as AOTAutograd gave it (warned, naming why), and its backward as one graph; a backward
that cannot be cut runs as one graph (said in explain).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy
import torch
import torch.fx
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._functorch.partitioners import min_cut_rematerialization_partition

from ..api import CompiledModel
from ..errors import DoraError
from ..ir.comm_ops import RECV
from .backward import BackwardSplitError, SplitBackward, assign_stages, split_backward
from .lift import LiftError, lift

if TYPE_CHECKING:
    from .records import GraphRecord

__all__ = ["TrainingGraph", "ForwardError"]


class ForwardError(ValueError):
    """AOTAutograd's forward graph has a shape dora_fx does not take (said why)."""


@dataclass
class _Planned:
    """The forward as dora_fx compiled it, and what the backward's cut needs from it."""

    compiled: CompiledModel
    user_positions: list[int]  # the forward's inputs the stages take
    weights: dict[int, torch.Tensor]  # forward input -> the weight the stages read
    outputs: list[tuple[str, Any]]  # per forward output (``_computed_outputs``)
    held_by: dict[str, frozenset[int]]  # forward output name -> the stages holding it
    readers: dict[int, int]  # forward input (weight) -> the last stage reading it
    stage_of: dict[str, int]  # forward node (AOTAutograd's name) -> the stage computing it


class TrainingGraph:
    """One Dynamo graph under AOTAutograd, for ``DoraBackend`` (its options and records)."""

    def __init__(
        self, backend: Any, record: GraphRecord, sources: Sequence[Any]  # backend: graphs.DoraBackend
    ) -> None:
        self.backend, self.record, self.sources = backend, record, list(sources)
        self.planned: _Planned | None = None
        self.forward_names: list[str] = []  # the forward graph's outputs, by node name
        self.forward_seq: dict[str, int] = {}  # forward node -> its autograd sequence number
        self.split: SplitBackward | None = None  # the backward's stages, once cut

    def compiler(self) -> Callable[..., Any]:
        """The AOTAutograd backend for this graph."""
        return aot_autograd(
            fw_compiler=self.forward_compiler,
            bw_compiler=self.backward_compiler,
            partition_fn=min_cut_rematerialization_partition,
        )

    def forward_compiler(self, gm: torch.fx.GraphModule, _: Sequence[Any]) -> Callable[..., Any]:
        (output,) = [n for n in gm.graph.nodes if n.op == "output"]
        self.forward_names = [v.name if isinstance(v, torch.fx.Node) else "" for v in output.args[0]]
        self.forward_seq = {n.name: n.meta["seq_nr"] for n in gm.graph.nodes if "seq_nr" in n.meta}
        built: list[Callable[..., Any]] = []

        def run(*args: Any) -> Any:
            if not built:  # planned on the first call, as the inference path is
                built.append(self._build_forward(gm, args))
            return built[0](*args)

        return make_boxed_func(run)

    def backward_compiler(self, gm: torch.fx.GraphModule, _: Sequence[Any]) -> Callable[..., Any]:
        built: list[Callable[..., Any]] = []

        def run(*args: Any) -> Any:
            if not built:  # after the forward's first call: its plan is made then
                built.append(self._build_backward(gm))
            return built[0](*args)

        return make_boxed_func(run)

    def _build_forward(self, gm: torch.fx.GraphModule, args: Sequence[Any]) -> Callable[..., Any]:
        started = time.perf_counter()
        try:
            self.planned = self._plan_forward(gm, args)
        except Exception as exc:  # noqa: BLE001 - any failure: the graph still trains, warned
            first = _first_line(exc)
            self.record.reason = f"dora_fx could not compile its forward: {first}"
            warnings.warn(
                f"dora backend: graph {self.record.index} (training) runs as AOTAutograd traced "
                f"it, on one device: {first}",
                stacklevel=4,
            )
            return gm.forward
        self.record.compile_s = time.perf_counter() - started
        planned = self.planned
        self.record.plan = planned.compiled.plan.to_text()
        self.record.notes += planned.compiled.notes
        return lambda *args: _run_forward(planned, args)

    def _plan_forward(self, gm: torch.fx.GraphModule, args: Sequence[Any]) -> _Planned:
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.sources):
            raise ForwardError(
                f"AOTAutograd's forward has {len(placeholders)} inputs, Dynamo's graph "
                f"{len(self.sources)} (inputs deduplicated or aliased)"
            )
        trimmed, outputs = _computed_outputs(gm)
        lifted = lift(trimmed, list(args), self.sources)
        compiled = self.backend.compile_graph(lifted, training=True)
        _refuse_data_parallel(compiled)
        weights = {i: lifted.weights[a] for i, a in lifted.weight_positions.items()}
        readers = _weight_readers(compiled, lifted.weight_positions)
        held = _holders(compiled)
        held_by = {self.forward_names[k]: held[j] for k, (kind, j) in enumerate(outputs) if kind == "stages"}
        stage_of = _forward_stages(compiled, lifted.module.graph)
        return _Planned(compiled, lifted.user_positions, weights, outputs, held_by, readers, stage_of)

    def _build_backward(self, gm: torch.fx.GraphModule) -> Callable[..., Any]:
        planned = self.planned
        if planned is None:
            self.record.backward = "backward: one graph, on one device (the forward was not planned)"
            return gm.forward
        try:
            split = self._split(gm, planned)
        except Exception as exc:  # noqa: BLE001 - any failure: the backward runs whole, warned
            first = _first_line(exc)
            self.record.backward = f"backward: one graph, on one device ({first})"
            warnings.warn(
                f"dora backend: graph {self.record.index}'s backward runs as one graph: {first}",
                stacklevel=4,
            )
            return gm.forward
        devices = [",".join(s.devices) for s in planned.compiled.plan.stages]
        self.record.backward = split.describe(devices)
        self.split = split
        return split

    def _split(self, gm: torch.fx.GraphModule, planned: _Planned) -> SplitBackward:
        names = set(self.forward_names)
        inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        for name in inputs:
            if not name.startswith("tangents") and name not in names:
                raise BackwardSplitError(f"its input {name} is no output of the forward")
        held_by = {k: v for k, v in planned.held_by.items() if k in inputs}
        (output,) = [n for n in gm.graph.nodes if n.op == "output"]
        grads = list(output.args[0])
        if len(grads) != len(self.sources):
            raise BackwardSplitError(
                f"it returns {len(grads)} gradients for the forward's {len(self.sources)} inputs"
            )
        stages = len(planned.compiled.plan.stages)
        output_stages = [planned.readers.get(i) for i in range(len(grads))]
        home = self._homes(gm, planned)
        placed = assign_stages(gm.graph, home, held_by, output_stages, stages)
        return split_backward(gm, placed, stages, held_by)

    def _homes(self, gm: torch.fx.GraphModule, planned: _Planned) -> dict[torch.fx.Node, int]:
        """Per backward node: the stage of the forward op it is the backward of (AOTAutograd
        gives both the autograd sequence number of that op, ``seq_nr``)."""
        of_seq: dict[int, int] = {}
        for name, seq in self.forward_seq.items():
            if name in planned.stage_of:
                of_seq[seq] = max(of_seq.get(seq, 0), planned.stage_of[name])
        return {
            n: of_seq[n.meta["seq_nr"]]
            for n in gm.graph.nodes
            if n.op == "call_function" and n.meta.get("seq_nr") in of_seq
        }


def _first_line(exc: Exception) -> str:
    """Our errors say what is wrong; any other names its type too."""
    first = (str(exc).splitlines() or [""])[0]
    known = (DoraError, ForwardError, LiftError, BackwardSplitError)
    return first if isinstance(exc, known) else f"{type(exc).__name__}: {first}"


def _forward_stages(compiled: CompiledModel, lifted: torch.fx.Graph) -> dict[str, int]:
    """Per node of the lifted forward graph: the stage computing it (export records each
    captured node's origin in ``meta["from_node"]``)."""
    state = compiled.state
    assert state.chain is not None
    block_stage = [compiled.plan.stage_of_block(b) for b in range(len(state.chain.blocks))]
    stages: dict[str, int] = {}
    for node, block in state.chain.block_of_node().items():
        name = _origin(node.meta.get("from_node") or [], id(lifted))
        if name is not None:
            stages[name] = max(stages.get(name, 0), block_stage[block])
    return stages


def _origin(sources: Sequence[Any], graph_id: int) -> str | None:
    """The name of the node of graph ``graph_id`` that a node's provenance leads to."""
    for source in sources:
        if getattr(source, "graph_id", None) == graph_id:
            return str(source.name)
        found = _origin(getattr(source, "from_node", []), graph_id)
        if found is not None:
            return found
    return None


def _run_forward(planned: _Planned, args: Sequence[Any]) -> list[Any]:
    for i, weight in planned.weights.items():
        if args[i] is not weight:
            raise DoraError(
                f"the forward's input {i} is not the weight its stages were compiled with "
                "(was a parameter or buffer replaced?); call torch._dynamo.reset() and compile "
                "again"
            )
    flat = planned.compiled(*[args[i] for i in planned.user_positions])
    return [_output(kind, where, flat, args) for kind, where in planned.outputs]


def _output(kind: str, where: Any, flat: Sequence[Any], args: Sequence[Any]) -> Any:
    if kind == "stages":
        return flat[where]
    if kind == "input":
        return args[where]
    expr, symbols = where  # a size: its expression in the sizes the forward takes
    return int(expr.xreplace({s: sympy.Integer(int(args[i])) for s, i in symbols.items()}))


def _computed_outputs(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[tuple[str, Any]]]:
    """``gm`` returning only the tensors it computes; per original output where it comes
    from: ``("stages", j)``, the j-th of those; ``("input", i)``, the graph's i-th input; or
    ``("size", (expr, {symbol: input}))``, a size saved for the backward, as an expression in
    the sizes the graph takes as inputs (Dynamo passes each dynamic size)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    symbols = {
        v.node.expr: i
        for i, n in enumerate(placeholders)
        if isinstance(v := n.meta.get("val"), torch.SymInt) and isinstance(v.node.expr, sympy.Symbol)
    }
    kept: list[torch.fx.Node] = []
    outputs: list[tuple[str, Any]] = []
    for value in output.args[0]:
        if isinstance(value, torch.fx.Node) and value.op == "placeholder":
            outputs.append(("input", placeholders.index(value)))
            continue
        val = value.meta.get("val") if isinstance(value, torch.fx.Node) else value
        if isinstance(val, torch.SymInt) and val.node.expr.free_symbols <= set(symbols):
            outputs.append(("size", (val.node.expr, symbols)))
            continue
        if not isinstance(val, torch.Tensor):
            raise ForwardError(f"its output {value} is a {type(val).__name__}, not a tensor")
        outputs.append(("stages", len(kept)))
        kept.append(value)
    graph = torch.fx.Graph()
    env = _copy_saved_early(gm.graph, graph)
    graph.output(tuple(env[n] for n in kept))
    return torch.fx.GraphModule(gm, graph), outputs


def _copy_saved_early(source: torch.fx.Graph, graph: torch.fx.Graph) -> dict[torch.fx.Node, torch.fx.Node]:
    """Copy ``source`` (not its output) into ``graph``, each node only the output reads (a
    view of an activation saved for the backward: AOTAutograd puts them last) right after its
    inputs, so it lands on the stage that computes them."""
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    saved_only = {
        n for n in source.nodes
        if n.op == "call_function" and n.users and all(u.op == "output" for u in n.users)
    }  # fmt: skip
    waiting: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in saved_only:
        for m in node.all_input_nodes:
            waiting.setdefault(m, []).append(node)

    def emit(node: torch.fx.Node) -> None:
        env[node] = graph.node_copy(node, env.__getitem__)
        for follower in waiting.pop(node, []):
            if follower not in env and all(m in env for m in follower.all_input_nodes):
                emit(follower)

    for node in source.nodes:
        if node.op != "output" and node not in env and (node not in saved_only or not node.all_input_nodes):
            emit(node)
    return env


def _refuse_data_parallel(compiled: CompiledModel) -> None:
    """A data-parallel stage joins its members' outputs along their batch dims; a saved tensor
    without one (the batch folded into another dim) would come back wrong."""
    for stage in compiled.stages:
        dims = [o.get("batch_dim") if o else None for o in stage.transfers.get("outputs", [])]
        if len(stage.devices) > 1 and None in dims:
            raise ForwardError(
                f"stage {stage.index} is data-parallel ({', '.join(stage.devices)}) and returns "
                "tensors saved for the backward that have no batch dim; give num_stages or a plan "
                "without a data-parallel stage"
            )


def _holders(compiled: CompiledModel) -> list[frozenset[int]]:
    """Per flat output of the compiled forward: the stage that computed it and the stages
    that received it."""
    state = compiled.state
    assert state.captured is not None and state.chain is not None
    (output,) = [n for n in state.captured.gm.graph.nodes if n.op == "output"]
    tags = {node: k for k, node in enumerate(state.chain.nodes)}
    received: dict[int, set[int]] = {}
    for program in state.programs:
        for node in program.gm.graph.nodes:
            if node.target is RECV:
                received.setdefault(int(node.kwargs["tag"]), set()).add(program.index)
    owner = {j: p.index for p in state.programs for j in p.output_indices}
    held = []
    for j, value in enumerate(output.args[0]):
        tag = tags.get(value) if isinstance(value, torch.fx.Node) else None
        held.append(frozenset({owner[j], *received.get(tag, set())}))  # type: ignore[arg-type]
    return held


def _weight_readers(compiled: CompiledModel, weight_positions: dict[int, str]) -> dict[int, int]:
    """Per weight input of the forward: the last stage that reads it."""
    state = compiled.state
    assert state.captured is not None
    source_of = state.captured.attr_sources  # stage attribute -> the lifted module's attribute
    readers: dict[str, int] = {}
    for program in state.programs:
        for node in program.gm.graph.nodes:
            if node.op == "get_attr":
                lifted = source_of.get(str(node.target), str(node.target))
                readers[lifted] = max(readers.get(lifted, 0), program.index)
    return {i: readers[a] for i, a in weight_positions.items() if a in readers}
