"""A Dynamo graph as a module dora_fx compiles: weights become attributes, sizes become ops.

Dynamo hands a backend a GraphModule whose placeholders are everything the frame read: the
user's tensors, and (modules inlined, the default) every parameter and buffer, and, after a
recompile with a dynamic dimension, a ``SymInt`` per dynamic size. ``lift`` turns the weights
(any tensor that is not one of the frame's own inputs: parameters, buffers, captured
constants) into attributes of a plain GraphModule, and each size placeholder into
``aten.sym_size`` of the input it measures, so the module's inputs are the user's tensors only
and ``dora_fx.compile`` can capture it like any model. ``dynamic_dims`` says which input
dimensions Dynamo made dynamic (the compile makes the batch dimension symbolic anyway; a
dynamic dimension 1 becomes ``seq_dim``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

__all__ = ["LiftedGraph", "LiftError", "graph_sources", "lift"]


class LiftError(ValueError):
    """The graph has an input dora_fx cannot map onto the user's tensors (e.g. a Python int
    argument, or a size of a tensor that is not an input); the backend runs it eagerly."""


@dataclass
class LiftedGraph:
    module: torch.fx.GraphModule  # inputs: the user's tensors; weights are attributes
    user_positions: list[int]  # where those tensors sit among Dynamo's arguments
    example_inputs: tuple[torch.Tensor, ...]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # attribute -> tensor
    weight_positions: dict[int, str] = field(default_factory=dict)  # argument -> attribute
    dynamic_dims: set[tuple[int, int]] = field(default_factory=set)  # (user input, dim)

    def user_args(self, args: Any) -> list[Any]:
        return [args[i] for i in self.user_positions]


def lift(
    gm: torch.fx.GraphModule, example_inputs: Sequence[Any], sources: Sequence[Any] | None = None
) -> LiftedGraph:
    """``gm`` (Dynamo's graph, called with ``example_inputs``) as a module of the user's
    tensors (see the module doc). ``sources``: what each input of ``gm`` is, as Dynamo's
    ``graph_sources`` of its graph says (for a graph derived from Dynamo's with the same
    inputs, e.g. AOTAutograd's forward); default: read off ``gm``'s placeholders."""
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise LiftError(
            f"the graph has {len(placeholders)} inputs but {len(example_inputs)} examples"
        )
    root = torch.nn.Module()
    lifted = LiftedGraph(torch.fx.GraphModule(root, torch.fx.Graph()), [], ())
    sizes: list[tuple[torch.fx.Node, Any]] = []
    by_source: dict[str, torch.fx.Node] = {}
    examples = []
    if sources is None:
        sources = [_source(node) for node in placeholders]
    elif len(sources) != len(placeholders):
        raise LiftError(f"the graph has {len(placeholders)} inputs but {len(sources)} sources")
    for position, (node, value) in enumerate(zip(placeholders, example_inputs, strict=True)):
        source = sources[position]
        if isinstance(value, torch.SymInt | int):
            sizes.append((node, source))
        elif not isinstance(value, torch.Tensor):
            raise LiftError(f"input {node.name} is a {type(value).__name__}, not a tensor")
        elif _is_user_input(source) and not isinstance(value, torch.nn.Parameter):
            env[node] = graph.placeholder(node.name)
            by_source[_name(source)] = env[node]
            lifted.user_positions.append(position)
            examples.append(value.detach().clone())  # not the caller's: capture marks dims
        else:
            attr = _attr_name(node.name, root)
            _register(root, attr, value)
            lifted.weights[attr] = value
            lifted.weight_positions[position] = attr
            env[node] = graph.get_attr(attr)
    for node, source in sizes:
        env[node] = _size_of(graph, node, source, by_source, lifted)
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            env[node] = graph.node_copy(node, lambda n: env[n])
    lifted.module = torch.fx.GraphModule(root, graph)
    lifted.example_inputs = tuple(examples)
    return lifted


def _size_of(
    graph: torch.fx.Graph,
    node: torch.fx.Node,
    source: Any,
    by_source: dict[str, torch.fx.Node],
    lifted: LiftedGraph,
) -> torch.fx.Node:
    """``aten.sym_size(tensor, dim)`` for a size placeholder whose source is a user tensor's
    size; a ``LiftError`` for any other int input."""
    base, index = getattr(source, "base", None), getattr(source, "idx", None)
    tensor = by_source.get(_name(base)) if base is not None else None
    if tensor is None or index is None or "SIZE" not in str(getattr(source, "prop", "")):
        raise LiftError(f"int input {node.name} ({_name(source)}) is not a size of an input")
    user = [n for n in graph.nodes if n.op == "placeholder"].index(tensor)
    lifted.dynamic_dims.add((user, int(index)))
    return graph.call_function(torch.ops.aten.sym_size.int, (tensor, int(index)))


def graph_sources(gm: torch.fx.GraphModule) -> list[Any]:
    """Dynamo's source of each input of its graph ``gm`` (None where it recorded none)."""
    return [_source(n) for n in gm.graph.nodes if n.op == "placeholder"]


def _source(node: torch.fx.Node) -> Any:
    arg = node.meta.get("grapharg")
    return getattr(arg, "source", None)


def _is_user_input(source: Any) -> bool:
    """Whether ``source`` is (part of) an argument of the compiled frame, not module state:
    a chain with no module (``...NNModuleSource``) or parameter/buffer source, rooted in one
    of the frame's inputs (``self`` is an input too, hence the first test)."""
    while source is not None:
        kind = type(source).__name__
        if "NNModule" in kind or "ParamBuffer" in kind:
            return False
        if getattr(source, "base", None) is None:
            return bool(getattr(source, "is_input", False))
        source = source.base
    return False


def _name(source: Any) -> str:
    return "" if source is None else source.name() if callable(getattr(source, "name", None)) else str(source)


def _attr_name(name: str, root: torch.nn.Module) -> str:
    base = re.sub(r"\W", "_", name.strip("_").lower()) or "weight"
    attr, k = base, 1
    while hasattr(root, attr):
        attr, k = f"{base}_{k}", k + 1
    return attr


def _register(root: torch.nn.Module, attr: str, value: torch.Tensor) -> None:
    if isinstance(value, torch.nn.Parameter):
        root.register_parameter(attr, value)
    else:
        root.register_buffer(attr, value)
