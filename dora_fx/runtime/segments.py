"""Running a stage one segment at a time, as its schedule's COMPUTE actions ask.

A schedule's ``F<k>`` computes segment ``k`` of one microbatch (``dora_fx.ir.lowering.segments``:
the stage graph cut where a received value is first needed and after a value another stage
needs is produced). Both runtimes run segments through a ``SegmentProgram``:

* ``GraphSegments``: a compiled stage (an FX GraphModule): ``torch.fx.Interpreter`` runs the
  nodes of segment ``k`` (what the verifier checks the schedule against);
* ``SourceSegments``: a loaded stage (the generated ``stage_K.py``, a plain module): its forward
  is cut at the ``# ---- segment Fk ----`` lines codegen writes, and each segment becomes a
  function of the module and an environment of the values live between segments. It runs the
  very statements of the saved forward, so segment-level and whole runs compute the same.

During a segment, the stage's ``dora.recv`` / ``dora.send`` ops go to a ``StageView``: a recv
reads what the schedule's WAIT put there, a send leaves the value for the schedule's SEND.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.fx

from ..ir.schedule import ScheduleError
from ..ir.stage_graph import segments

__all__ = ["StageView", "SegmentProgram", "GraphSegments", "SourceSegments", "segment_program"]

_MARK = re.compile(r"\s*# ---- segment F(\d+) ----\s*$")
_ENV = "__dora_env"


class StageView:
    """The transport a stage's segment sees for one microbatch: received values, an outbox."""

    def __init__(self, stage: int, mb: int) -> None:
        self.stage, self.mb = stage, mb
        self.received: dict[tuple[int, int], torch.Tensor] = {}
        self.outbox: dict[tuple[int, int], torch.Tensor] = {}

    def recv(self, peer: int, tag: int) -> torch.Tensor:
        try:
            return self.received[(peer, tag)]
        except KeyError:
            raise ScheduleError(
                f"stage {self.stage} uses tag {tag} from stage {peer} in microbatch {self.mb} "
                "before the schedule waited for it (a WAIT must precede the segment using it)"
            ) from None

    def send(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        self.outbox[(peer, tag)] = tensor

    def take(self, peer: int, tag: int, action: object) -> torch.Tensor:
        """The value a SEND hands to the network (produced by an earlier segment)."""
        tensor = self.outbox.pop((peer, tag), None)
        if tensor is None:
            raise ScheduleError(
                f"stage {self.stage}: {action} sends a value its segments have not produced yet"
            )
        return tensor


class SegmentProgram(Protocol):
    """A stage's segments: ``start`` one microbatch, ``run`` its segments in order; the last
    returns the stage's outputs (the forward's return value as a list), the others None."""

    count: int

    def start(self, inputs: list[Any]) -> Any: ...

    def run(self, state: Any, segment: int) -> list[Any] | None: ...


class GraphSegments:
    """Segments of an FX stage graph, interpreted node by node."""

    def __init__(self, gm: torch.fx.GraphModule, split: bool = True) -> None:
        self.gm = gm
        self.segments = segments(gm.graph, split)
        self.count = len(self.segments)
        (self.output,) = [n for n in gm.graph.nodes if n.op == "output"]

    def start(self, inputs: list[Any]) -> torch.fx.Interpreter:
        interpreter = torch.fx.Interpreter(self.gm, garbage_collect_values=False)
        interpreter.args_iter = iter(inputs)
        return interpreter

    def run(self, state: torch.fx.Interpreter, segment: int) -> list[Any] | None:
        for node in self.segments[segment]:
            state.env[node] = state.run_node(node)
        if segment == self.count - 1:
            return list(state.run_node(self.output))
        return None


class SourceSegments:
    """Segments of a generated stage's forward (see the module doc), from its source text."""

    def __init__(self, module: torch.nn.Module, source: str) -> None:
        self.module = module
        forward = _forward_def(source, type(module).__name__)
        params = [a.arg for a in forward.args.args[1:]]
        lines = source.splitlines()
        marks = {
            number: int(match.group(1))
            for number in range(forward.lineno, (forward.end_lineno or forward.lineno) + 1)
            if (match := _MARK.match(lines[number - 1]))
        }
        if sorted(marks.values()) != list(range(len(marks))):
            raise ScheduleError(
                f"{type(module).__name__}'s forward marks segments {sorted(marks.values())}; "
                "expected F0, F1, ... in order (was the stage file edited?)"
            )
        bodies: list[list[ast.stmt]] = [[] for _ in range(max(len(marks), 1))]
        for statement in forward.body:
            before = [k for line, k in marks.items() if line < statement.lineno]
            bodies[max(before, default=0)].append(statement)
        self.count = len(bodies)
        local = set(params) | {
            n.id for s in forward.body for n in ast.walk(s)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }  # fmt: skip
        needs = [_needed(body, local) for body in bodies]
        self.last_use = {name: k for k, names in enumerate(needs) for name in names}
        self.params = params
        globals_ = type(module).forward.__globals__
        self.functions = [
            _segment_function(body, needs[k], self._exports(body, k), k, globals_)
            for k, body in enumerate(bodies)
        ]

    def _exports(self, body: list[ast.stmt], k: int) -> list[str]:
        assigned = {
            n.id for s in body for n in ast.walk(s)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }  # fmt: skip
        return sorted(name for name in assigned if self.last_use.get(name, -1) > k)

    def start(self, inputs: list[Any]) -> dict[str, Any]:
        if len(inputs) != len(self.params):
            raise ScheduleError(
                f"{type(self.module).__name__} takes {self.params}, got {len(inputs)} input(s)"
            )
        return dict(zip(self.params, inputs))

    def run(self, state: dict[str, Any], segment: int) -> list[Any] | None:
        result = self.functions[segment](self.module, state)
        for name in [n for n in state if self.last_use.get(n, -1) <= segment]:
            del state[name]  # no later segment reads it
        if segment == self.count - 1:
            return list(result)
        return None


def segment_program(module: torch.nn.Module, source: str, split: bool = True) -> SegmentProgram:
    """The segments of a stage: of its graph when it is one, else of its generated source."""
    if isinstance(module, torch.fx.GraphModule):
        return GraphSegments(module, split)
    return SourceSegments(module, source)


def _forward_def(source: str, class_name: str) -> ast.FunctionDef:
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "forward":
                    return item
    raise ScheduleError(f"the stage source has no {class_name}.forward to cut into segments")


def _needed(body: list[ast.stmt], local: set[str]) -> list[str]:
    """Local names a segment reads before it assigns them: what it takes from earlier ones."""
    assigned: set[str] = set()
    needed: list[str] = []
    for statement in body:
        for node in ast.walk(statement):
            if (
                isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
                and node.id in local and node.id not in assigned and node.id not in needed
            ):  # fmt: skip
                needed.append(node.id)
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assigned.add(node.id)
    return needed


def _segment_function(
    body: list[ast.stmt], needs: list[str], exports: list[str], k: int, globals_: dict[str, Any]
) -> Callable[[torch.nn.Module, dict[str, Any]], Any]:
    """``def segment_k(self, env)``: read ``needs`` from env, run ``body``, write ``exports``
    back before any return."""
    load = [ast.parse(f"{name} = {_ENV}[{name!r}]").body[0] for name in needs]
    store = [ast.parse(f"{_ENV}[{name!r}] = {name}").body[0] for name in exports]
    statements = [s for s in body if not isinstance(s, ast.Return)]
    returns = [s for s in body if isinstance(s, ast.Return)]
    function = ast.parse(f"def segment_{k}(self, {_ENV}):\n    pass").body[0]
    assert isinstance(function, ast.FunctionDef)
    function.body = [*load, *statements, *store, *returns] or function.body
    module = ast.fix_missing_locations(ast.Module(body=[function], type_ignores=[]))
    namespace: dict[str, Any] = {}
    exec(compile(module, f"<stage segment F{k}>", "exec"), globals_, namespace)  # noqa: S102
    segment: Callable[[torch.nn.Module, dict[str, Any]], Any] = namespace[f"segment_{k}"]
    return segment
