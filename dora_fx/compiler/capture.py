"""Pass 1, capture: the user's model becomes one flat FX graph of ATen ops.

``torch.export`` first, with the batch dimension of every tensor input dynamic (and the sequence
dimension when asked), so costs come out as expressions in ``batch``/``seq``. The exported
graph's parameter/buffer/constant placeholders are turned into ``get_attr`` nodes on a plain
GraphModule: what we partition is the graph's own structure, not the pytree wrapper that
``ep.module()`` adds. When export cannot capture the model, ``symbolic_trace`` plus shape
propagation on the example inputs is the fallback (static shapes; costs are then scaled
linearly in the batch, see annotate_costs).
"""

from __future__ import annotations

import keyword
import operator
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from ..errors import CaptureError, InputError

__all__ = ["Captured", "capture", "BATCH", "SEQ"]

BATCH = "batch"
SEQ = "seq"


@dataclass
class Captured:
    """A captured model: a flat graph plus how to map the user's call onto its inputs."""

    gm: torch.fx.GraphModule
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    method: str  # "export" or "symbolic_trace"
    # symbol name in the graph (e.g. "s72") -> our name ("batch", "seq")
    symbols: dict[str, str] = field(default_factory=dict)
    # attribute on gm -> the model's state_dict key, for explain() and weight files
    attr_sources: dict[str, str] = field(default_factory=dict)
    example_batch: int = 1
    notes: list[str] = field(default_factory=list)
    training: bool = False  # the mode the model was captured in

    @property
    def input_names(self) -> list[str]:
        return [n.name for n in self.gm.graph.nodes if n.op == "placeholder"]


def capture(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    example_kwargs: dict[str, Any] | None = None,
    *,
    seq_dim: int | None = None,
    dynamic: bool = True,
    for_training: bool = False,
) -> Captured:
    """Capture ``model`` called as ``model(*example_inputs, **example_kwargs)``;
    ``for_training``: the model is in training mode on purpose (no warning)."""
    args, kwargs = _check_inputs(model, example_inputs, example_kwargs)
    captured = _capture(model, args, kwargs, seq_dim, dynamic, for_training)
    captured.training = bool(model.training)
    return captured


def _capture(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seq_dim: int | None,
    dynamic: bool,
    for_training: bool,
) -> Captured:
    if model.training and not for_training:
        warnings.warn(
            "the model is in training mode; dropout and batch-norm statistics are captured as "
            "such. Call model.eval() first for inference plans.",
            stacklevel=3,
        )
    export_error: Exception | None = None
    try:
        ep = _export(model, args, kwargs, seq_dim=seq_dim, dynamic=dynamic)
        return _from_exported(ep, args)
    except CaptureError:
        raise
    except Exception as exc:  # noqa: BLE001 - any export failure sends us to the fallback
        export_error = exc
    try:
        return _from_symbolic_trace(model, args, kwargs, export_error)
    except Exception as trace_error:
        raise CaptureError(_explain_failure(model, export_error, trace_error)) from trace_error


def _check_inputs(
    model: Any, example_inputs: Any, example_kwargs: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not isinstance(model, torch.nn.Module):
        raise InputError(
            f"dora_fx captures a torch.nn.Module, got {type(model).__name__}; wrap functions "
            "in a Module"
        )
    if isinstance(example_inputs, torch.Tensor):
        raise InputError(
            "example_inputs must be a tuple of the model's positional inputs, got a single "
            "Tensor; write example_inputs=(x,)"
        )
    if not isinstance(example_inputs, (tuple, list)):
        raise InputError(
            f"example_inputs must be a tuple of the model's positional inputs, got "
            f"{type(example_inputs).__name__}"
        )
    kwargs = dict(example_kwargs or {})
    leaves = pytree.tree_leaves((tuple(example_inputs), kwargs))
    if not any(isinstance(leaf, torch.Tensor) for leaf in leaves):
        raise InputError("example_inputs hold no tensor; give real example tensors")
    for leaf in leaves:
        if not isinstance(leaf, (torch.Tensor, int, float, bool, str, type(None))):
            raise InputError(
                f"example inputs may hold tensors and plain Python scalars only, got "
                f"{type(leaf).__name__}"
            )
    return tuple(example_inputs), kwargs


def _export(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    seq_dim: int | None,
    dynamic: bool,
) -> ExportedProgram:
    """Export with the most dynamic dims the model allows: (batch, seq), then batch, then none."""
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    batch = tensors[0].shape[0] if tensors[0].dim() else 1
    attempts: list[tuple[str, ...]] = []
    # export specializes dims of size 0/1, so a batch of 1 cannot be made dynamic.
    if dynamic and batch >= 2 and all(t.dim() and t.shape[0] == batch for t in tensors):
        attempts = [(BATCH, SEQ), (BATCH,)] if seq_dim is not None else [(BATCH,)]
    elif dynamic:
        warnings.warn(
            "example batch is 1 (or inputs disagree on dim 0): capturing with a static batch; "
            "give an example batch of at least 2 for batch-symbolic costs",
            stacklevel=4,
        )
    for names in attempts:
        shapes = _dynamic_shapes(tensors, names, seq_dim)
        try:
            return torch.export.export(
                model, args, kwargs, dynamic_shapes=shapes.dynamic_shapes(model, args, kwargs),
                strict=False,
            )
        except Exception as exc:  # noqa: BLE001
            text = str(exc)
            if "Constraints violated" not in text and "specializ" not in text:
                raise
            warnings.warn(
                f"the model specializes its {'/'.join(names)} size "
                f"({text.splitlines()[0][:160]}); trying fewer dynamic dims",
                stacklevel=4,
            )
    return torch.export.export(model, args, kwargs, strict=False)


def _dynamic_shapes(
    tensors: list[torch.Tensor], names: tuple[str, ...], seq_dim: int | None
) -> torch.export.ShapesCollection:
    shapes = torch.export.ShapesCollection()
    dims = {name: torch.export.Dim(name) for name in names}
    for t in tensors:
        spec: dict[int, Any] = {0: dims[BATCH]}
        if SEQ in dims and seq_dim is not None and t.dim() > seq_dim:
            spec[seq_dim] = dims[SEQ]
        shapes[t] = spec
    return shapes


def _from_exported(ep: ExportedProgram, args: tuple[Any, ...]) -> Captured:
    graph = torch.fx.Graph()
    value_map: dict[torch.fx.Node, torch.fx.Node] = {}
    out = graph.graph_copy(ep.graph, value_map)
    _inline_wrappers(graph, ep.graph_module)
    root = torch.nn.Module()
    state = {**ep.state_dict, **ep.constants}
    attr_sources: dict[str, str] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            raise CaptureError(f"unsupported exported input {spec.arg.name} of kind {spec.kind.name}")
        placeholder = value_map[_node_named(ep.graph, spec.arg.name)]
        attr = _unique_attr(root, spec.target or spec.arg.name)
        tensor = state[spec.target]
        if spec.kind == InputKind.PARAMETER:
            root.register_parameter(attr, torch.nn.Parameter(tensor.detach(), tensor.requires_grad))
        else:
            root.register_buffer(attr, tensor, persistent=True)
        attr_sources[attr] = spec.target or spec.arg.name
        with graph.inserting_before(placeholder):
            getter = graph.get_attr(attr)
        getter.meta = dict(placeholder.meta)
        placeholder.replace_all_uses_with(getter)
        graph.erase_node(placeholder)
    user_outputs = [
        value
        for spec, value in zip(ep.graph_signature.output_specs, _as_tuple(out))
        if spec.kind == OutputKind.USER_OUTPUT
    ]
    graph.output(tuple(user_outputs))
    graph.eliminate_dead_code()
    gm = torch.fx.GraphModule(root, graph, class_name="CapturedModel")
    captured = Captured(
        gm=gm,
        in_spec=ep.call_spec.in_spec,
        out_spec=ep.call_spec.out_spec,
        method="export",
        attr_sources=attr_sources,
        example_batch=_example_batch(args),
    )
    captured.symbols = _name_symbols(gm)
    return captured


def _inline_wrappers(graph: torch.fx.Graph, owner: torch.nn.Module) -> None:
    """Inline the submodules export wraps grad-mode and autocast regions in (Llama's rotary
    embedding runs under ``torch.autocast(enabled=False)``): for inference on float32 graphs
    they change nothing, and a flat graph is what stages are cut from."""
    hops = torch.ops.higher_order
    submodule_arg = {hops.wrap_with_set_grad_enabled: 1, hops.wrap_with_autocast: 4}
    while wrappers := [
        n for n in graph.nodes if n.op == "call_function" and n.target in submodule_arg
    ]:
        for node in wrappers:
            k = submodule_arg[node.target]
            if node.target is hops.wrap_with_autocast and node.args[2]:
                raise CaptureError(
                    f"node {node.name}: enabled torch.autocast regions are not supported yet; "
                    "capture the model in the dtype you want to run instead"
                )
            getter = node.args[k]
            sub = getattr(owner, getter.target)
            _inline_one(graph, node, sub.graph, node.args[k + 1 :])
            if not getter.users:
                graph.erase_node(getter)


def _inline_one(
    graph: torch.fx.Graph, node: torch.fx.Node, body: torch.fx.Graph, operands: Sequence[Any]
) -> None:
    env: dict[torch.fx.Node, Any] = dict(
        zip([n for n in body.nodes if n.op == "placeholder"], operands)
    )
    results: tuple[Any, ...] = ()
    with graph.inserting_before(node):
        for inner in body.nodes:
            if inner.op == "output":
                results = _as_tuple(pytree.tree_map_only(torch.fx.Node, env.__getitem__, inner.args[0]))
            elif inner.op != "placeholder":
                env[inner] = graph.node_copy(inner, env.__getitem__)
    for user in list(node.users):
        if user.target is not operator.getitem:
            raise CaptureError(f"cannot inline {node.name}: its result is used by {user.name}")
        user.replace_all_uses_with(results[int(user.args[1])])  # type: ignore[arg-type]
        graph.erase_node(user)
    graph.erase_node(node)


def _node_named(graph: torch.fx.Graph, name: str) -> torch.fx.Node:
    for node in graph.nodes:
        if node.name == name:
            return node
    raise CaptureError(f"exported graph has no node {name!r}")


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _unique_attr(root: torch.nn.Module, target: str) -> str:
    """An attribute name for state_dict key ``target`` that the generated stage source can
    spell: ``layers.0.weight`` -> ``layers_0_weight``, ``2.weight`` (nn.Sequential) ->
    ``p_2_weight``."""
    base = re.sub(r"\W", "_", target)
    if not base.isidentifier() or keyword.iskeyword(base):
        base = f"p_{base}"
    name, k = base, 1
    while hasattr(root, name):
        name, k = f"{base}_{k}", k + 1
    return name


def _example_batch(args: Any) -> int:
    for leaf in pytree.tree_leaves(args):
        if isinstance(leaf, torch.Tensor) and leaf.dim():
            return int(leaf.shape[0])
    return 1


def _name_symbols(gm: torch.fx.GraphModule) -> dict[str, str]:
    """The symbol of dim 0 of the inputs is ``batch``, of dim 1 (when dynamic) ``seq``."""
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for dim, our_name in ((0, BATCH), (1, SEQ)):
            size = val.shape[dim] if val.dim() > dim else None
            if isinstance(size, torch.SymInt):
                names.setdefault(str(size.node.expr), our_name)
    return names


def _from_symbolic_trace(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], export_error: Any
) -> Captured:
    from .shape_fallback import trace_with_shapes

    gm, in_spec, out_spec = trace_with_shapes(model, args, kwargs)
    first_line = str(export_error).strip().splitlines()[0] if export_error else "?"
    warnings.warn(
        f"torch.export failed ({type(export_error).__name__}: {first_line[:200]}); "
        "fell back to symbolic_trace with static shapes",
        stacklevel=3,
    )
    return Captured(
        gm=gm,
        in_spec=in_spec,
        out_spec=out_spec,
        method="symbolic_trace",
        example_batch=_example_batch(args),
        notes=[f"torch.export failed: {type(export_error).__name__}: {first_line[:200]}"],
    )


def _explain_failure(model: torch.nn.Module, export_error: Any, trace_error: Exception) -> str:
    def first(exc: Any) -> str:
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0][:300] if text else ''}"

    return (
        f"could not capture {type(model).__name__}.\n"
        f"  torch.export: {first(export_error)}\n"
        f"  torch.fx.symbolic_trace: {first(trace_error)}\n"
        "Fix: remove data-dependent Python control flow on tensor values from forward() "
        "(branch with torch.cond, or compute the condition outside the model), avoid .item()/"
        "tolist() on tensors, or pass such values as plain Python arguments."
    )
