"""Pass 5, insert_comm: one GraphModule per stage, cross-stage values as explicit send/recv.

For a plan over the block chain, stage *s* computes the placed nodes of its blocks, in order.
Every value it uses from an earlier stage becomes ``torch.ops.dora.recv(src, tag)`` right
before its first use; every value a later stage uses gets ``torch.ops.dora.send(value, dst,
tag)`` right after it is computed, one per destination stage. The tag is the value's position
in the placed order, so both sides agree. Shape integers are not sent when the receiving stage
can read them off a tensor it has (``sym_size``); otherwise they travel as 0-d tensors.
Weights and buffers are copied into exactly the stages that use them (shared, not cloned).
The schedule pass may reorder these nodes later; this pass places them naively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from ...errors import PlanError
from ...ir.comm_ops import RECV, SEND
from ...ir.plan import Plan
from .coarsen import BlockChain

__all__ = ["StageProgram", "insert_comm", "stage_transfers", "tensor_spec"]

_SYM_SIZE = torch.ops.aten.sym_size.int
_SCALAR_TENSOR = torch.ops.aten.scalar_tensor.default
_ITEM = torch.ops.aten._local_scalar_dense.default


@dataclass
class StageProgram:
    """One stage's graph and how it connects to the user's inputs and outputs."""

    index: int
    gm: torch.fx.GraphModule
    input_indices: list[int]  # positions in the flat user inputs, in placeholder order
    output_indices: list[int]  # positions in the flat user outputs that this stage returns
    node_names: list[str] = field(default_factory=list)  # placed nodes of the source graph


def insert_comm(gm: torch.fx.GraphModule, chain: BlockChain, plan: Plan) -> list[StageProgram]:
    stage_of = _stage_of_nodes(chain, plan)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    (output_node,) = [n for n in gm.graph.nodes if n.op == "output"]
    flat_outputs = list(output_node.args[0])
    last = len(plan.stages) - 1
    owner = [stage_of.get(v, last) if isinstance(v, torch.fx.Node) else last for v in flat_outputs]
    tags = {node: k for k, node in enumerate(chain.nodes)}
    shape_sources = _shape_sources(chain, stage_of, placeholders)
    _refuse_batch_ints_into_groups(chain, stage_of, shape_sources, plan)
    return [
        _StageBuilder(gm, s, stage_of, tags, placeholders, shape_sources).build(
            [v for v, o in zip(flat_outputs, owner) if o == s],
            [k for k, o in enumerate(owner) if o == s],
        )
        for s in range(len(plan.stages))
    ]


def _stage_of_nodes(chain: BlockChain, plan: Plan) -> dict[torch.fx.Node, int]:
    if plan.num_blocks != len(chain.blocks):
        raise PlanError(
            f"plan {plan.name!r} covers {plan.num_blocks} blocks but the model has "
            f"{len(chain.blocks)}; was it made for another model or max_blocks setting?"
        )
    stage_of_block = [plan.stage_of_block(b) for b in range(len(chain.blocks))]
    return {node: stage_of_block[block] for node, block in chain.block_of_node().items()}


ShapeSource = tuple[torch.fx.Node, int]  # (tensor, dim) whose size is the shape integer


def _shape_sources(
    chain: BlockChain, stage_of: dict[torch.fx.Node, int], placeholders: list[torch.fx.Node]
) -> dict[tuple[torch.fx.Node, int], ShapeSource]:
    """For each shape integer used by a later stage: a tensor that stage has anyway (an input
    or a received tensor) with a dim of that size. Sender and receiver both consult this, so
    a shape integer is sent exactly when the receiver cannot read it off a tensor."""
    consumers: dict[int, list[torch.fx.Node]] = {}
    for node in chain.nodes:
        for user in node.users:
            if stage_of.get(user, stage_of[node]) > stage_of[node]:
                consumers.setdefault(stage_of[user], []).append(node)
    sources = {}
    for stage, received in consumers.items():
        have = [p for p in placeholders if any(stage_of.get(u) == stage for u in p.users)]
        have += [n for n in received if isinstance(n.meta.get("val"), torch.Tensor)]
        for node in received:
            val = node.meta.get("val")
            if isinstance(val, torch.SymInt):
                found = _find_dim(have, val)
                if found is not None:
                    sources[(node, stage)] = found
    return sources


def _refuse_batch_ints_into_groups(
    chain: BlockChain,
    stage_of: dict[torch.fx.Node, int],
    sources: dict[tuple[torch.fx.Node, int], ShapeSource],
    plan: Plan,
) -> None:
    """A shape integer sent as a 0-d tensor carries the whole batch's value; a member of a
    data-parallel group needs its own share's. Refuse such plans rather than compute wrongly."""
    for node in chain.nodes:
        val = node.meta.get("val")
        if not isinstance(val, torch.SymInt):
            continue
        for user in node.users:
            stage = stage_of.get(user, stage_of[node])
            if (
                stage > stage_of[node]
                and (node, stage) not in sources
                and plan.stages[stage].data_parallel
            ):
                raise PlanError(
                    f"stage {stage} is data-parallel ({', '.join(plan.stages[stage].devices)}) "
                    f"but needs the shape integer {node.name} = {val.node.expr} from stage "
                    f"{stage_of[node]}, which it cannot read off its own tensors; move the cut "
                    "so the stage starts where that value is recomputed, or make it one device"
                )


def _find_dim(tensors: list[torch.fx.Node], size: torch.SymInt) -> ShapeSource | None:
    for tensor_node in tensors:
        for dim, dim_size in enumerate(tensor_node.meta["val"].shape):
            if isinstance(dim_size, torch.SymInt) and dim_size.node.expr == size.node.expr:
                return tensor_node, dim
    return None


class _StageBuilder:
    def __init__(
        self,
        source: torch.fx.GraphModule,
        stage: int,
        stage_of: dict[torch.fx.Node, int],
        tags: dict[torch.fx.Node, int],
        placeholders: list[torch.fx.Node],
        shape_sources: dict[tuple[torch.fx.Node, int], ShapeSource],
    ) -> None:
        self.source, self.stage, self.stage_of, self.tags = source, stage, stage_of, tags
        self.placeholders, self.shape_sources = placeholders, shape_sources
        self.graph = torch.fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[torch.fx.Node, torch.fx.Node] = {}
        self.mine = [n for n in tags if stage_of[n] == stage]

    def build(self, outputs: list[Any], output_indices: list[int]) -> StageProgram:
        used_inputs = self._used_placeholders(outputs)
        for node in used_inputs:
            self.env[node] = self.graph.placeholder(node.name)
            self.env[node].meta = dict(node.meta)
        for node in self.mine:
            copy = self.graph.node_copy(node, self._local)
            self.env[node] = copy
            self._send_to_later_stages(node)
        self.graph.output(tuple(self._local(v) if isinstance(v, torch.fx.Node) else v for v in outputs))
        gm = torch.fx.GraphModule(self.root, self.graph, class_name=f"Stage{self.stage}")
        return StageProgram(
            index=self.stage,
            gm=gm,
            input_indices=[self.placeholders.index(n) for n in used_inputs],
            output_indices=output_indices,
            node_names=[n.name for n in self.mine],
        )

    def _used_placeholders(self, outputs: list[Any]) -> list[torch.fx.Node]:
        used = {a for n in self.mine for a in n.all_input_nodes if a.op == "placeholder"}
        used |= {v for v in outputs if isinstance(v, torch.fx.Node) and v.op == "placeholder"}
        return [p for p in self.placeholders if p in used]

    def _local(self, node: torch.fx.Node) -> torch.fx.Node:
        """The node's value inside this stage, fetching weights and receiving as needed."""
        if node in self.env:
            return self.env[node]
        if node.op == "get_attr":
            return self._weight(node)
        val = node.meta.get("val")
        if isinstance(val, int) and not isinstance(val, bool):
            return val  # type: ignore[return-value]  # static shape int: inline the constant
        if isinstance(val, torch.SymInt):
            return self._shape_int(node)
        received = self._recv(node, node.name)
        received.meta = dict(node.meta)
        self.env[node] = received
        return received

    def _weight(self, node: torch.fx.Node) -> torch.fx.Node:
        tensor = getattr(self.source, node.target)  # type: ignore[arg-type]
        if isinstance(tensor, torch.nn.Parameter):
            self.root.register_parameter(node.target, tensor)  # type: ignore[arg-type]
        else:
            self.root.register_buffer(node.target, tensor)  # type: ignore[arg-type]
        getter = self.graph.get_attr(node.target)  # type: ignore[arg-type]
        getter.meta = dict(node.meta)
        self.env[node] = getter
        return getter

    def _shape_int(self, node: torch.fx.Node) -> torch.fx.Node:
        """Read a shape integer off a tensor this stage has, or receive it as a 0-d tensor."""
        source = self.shape_sources.get((node, self.stage))
        if source is not None:
            tensor, dim = source
            value = self.graph.call_function(_SYM_SIZE, (self._local(tensor), dim))
        else:
            as_tensor = self._recv(node, f"{node.name}_tensor")
            value = self.graph.call_function(_ITEM, (as_tensor,))
        value.meta = dict(node.meta)
        self.env[node] = value
        return value

    def _send_to_later_stages(self, node: torch.fx.Node) -> None:
        destinations = sorted(
            stage
            for stage in {self.stage_of.get(u, self.stage) for u in node.users}
            if stage > self.stage and (node, stage) not in self.shape_sources
        )
        if not destinations:
            return
        value = self.env[node]
        val = node.meta.get("val")
        if isinstance(val, torch.SymInt):
            value = self.graph.call_function(_SCALAR_TENSOR, (value,), {"dtype": torch.int64})
        elif not isinstance(val, torch.Tensor):
            return  # static ints are inlined by the receiver
        for dst in destinations:
            self.graph.call_function(
                SEND, (value,), {"peer": dst, "tag": self.tags[node]}, name=f"send_{node.name}"
            )

    def _recv(self, node: torch.fx.Node, name: str) -> torch.fx.Node:
        peer, tag = self.stage_of[node], self.tags[node]
        return self.graph.call_function(RECV, (), {"peer": peer, "tag": tag}, name=name)



def tensor_spec(value: Any, symbol_names: dict[str, str]) -> dict[str, Any] | None:
    """dtype, shape (dims as ints or expressions in ``batch``/``seq``) and the batch dim of a
    value crossing a boundary; what a distributed receiver or a data-parallel split needs."""
    if not isinstance(value, torch.Tensor):
        return None
    shape: list[int | str] = []
    batch_dim = None
    for dim, size in enumerate(value.shape):
        if isinstance(size, torch.SymInt):
            text = str(size.node.expr)
            for graph_name, our_name in symbol_names.items():
                text = re.sub(rf"\b{graph_name}\b", our_name, text)
            shape.append(text)
            if text == "batch" and batch_dim is None:
                batch_dim = dim
        else:
            shape.append(int(size))
    return {"dtype": str(value.dtype).removeprefix("torch."), "shape": shape, "batch_dim": batch_dim}


def stage_transfers(gm: torch.fx.GraphModule, symbol_names: dict[str, str]) -> dict[str, Any]:
    """The stage's sends, receives and returned outputs, described for the runtimes."""

    def spec(node: torch.fx.Node) -> dict[str, Any] | None:
        return tensor_spec(node.meta.get("val"), symbol_names)

    sends = [
        {"peer": n.kwargs["peer"], "tag": n.kwargs["tag"], "tensor": spec(n.args[0])}
        for n in gm.graph.nodes
        if n.target is SEND
    ]
    recvs = [
        {"peer": n.kwargs["peer"], "tag": n.kwargs["tag"], "tensor": spec(n)}
        for n in gm.graph.nodes
        if n.target is RECV
    ]
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    outputs = [spec(v) if isinstance(v, torch.fx.Node) else None for v in output.args[0]]
    return {"sends": sends, "recvs": recvs, "outputs": outputs}
