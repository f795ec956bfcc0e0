"""The ``dora`` torch.compile backend: each Dynamo graph planned and run by dora_fx.

Dynamo calls the backend once per graph it captures (a graph break makes two graphs, a
recompile for new shapes another). For each: ``lift`` makes it a module of the user's
tensors; a graph under ``min_flops`` at its example inputs, or one dora_fx cannot lift or
capture, runs as Dynamo gave it (on one device; a capture failure warns, naming the error);
every other graph goes through ``dora_fx.compile`` (the same passes as any model) with the
user's own parameters and buffers (``share_weights``) and is called in-process
(``LocalPipeline``) or, with ``runtime="distributed"``, on a session of one process per
device. In process, a call with autograd on records the stages' ops, so ``backward()``
reaches the user's parameters through every stage; the distributed runtime serves inference
only, and a call there with autograd on and trainable weights runs the graph eagerly.
``DoraBackend.explain()`` lists each graph: its plan, or why it ran locally.
"""

from __future__ import annotations

import atexit
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch.utils.flop_counter import FlopCounterMode

from ..api import CompiledModel, compile
from ..errors import DoraError
from .lift import LiftedGraph, LiftError, graph_sources, lift
from .options import BackendOptions
from .records import GraphRecord, flops_text

__all__ = ["DoraBackend", "GraphRecord", "last_backend"]


class DoraBackend:
    """A torch.compile backend bound to its options (``dora_fx.backend(devices, qoe)``)."""

    def __init__(self, options: BackendOptions) -> None:
        self.options = options
        self.records: list[GraphRecord] = []
        self._sessions: list[Any] = []
        self.training_graphs: list[Any] = []  # ``training.TrainingGraph`` per AOTAutograd graph

    def __call__(
        self, gm: torch.fx.GraphModule, example_inputs: list[Any], **_: Any
    ) -> Callable[..., Any]:
        global _last
        _last = self  # the backend that compiled the latest graph (``explain_last``)
        record = GraphRecord(len(self.records), _ops(gm), 0.0)
        self.records.append(record)
        try:
            lifted = lift(gm, example_inputs)
        except LiftError as exc:
            record.reason = f"its inputs cannot be mapped onto tensors ({exc})"
            return gm.forward
        record.flops = _count_flops(lifted)
        if record.flops < self.options.min_flops:
            record.reason = (
                f"{flops_text(record.flops)} < min_flops {self.options.min_flops:g} (a cut would "
                "cost more time on the network than it saves)"
            )
            return gm.forward
        if self._trains(example_inputs):
            return self._train(gm, example_inputs, record)
        built: list[Callable[..., Any]] = []

        def run(*args: Any) -> Any:
            # planned on the first call: torch.export inside Dynamo's own compile of the frame
            # would change what Dynamo guards the frame's inputs on
            if not built:
                built.append(self._build(gm, lifted, record))
            return built[0](*args)

        return run

    def _trains(self, example_inputs: list[Any]) -> bool:
        """Whether the graph goes through AOTAutograd: in process, with ``aot`` on, autograd on
        and an input (a weight, or the user's tensor) that needs a gradient."""
        return (
            self.options.aot
            and self.options.runtime == "inprocess"
            and torch.is_grad_enabled()
            and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs)
        )

    def _train(
        self, gm: torch.fx.GraphModule, example_inputs: list[Any], record: GraphRecord
    ) -> Callable[..., Any]:
        from .training import TrainingGraph  # AOTAutograd's imports: only when training

        record.backward = "backward: not run yet (it is cut on its first call)"
        graph = TrainingGraph(self, record, graph_sources(gm))
        self.training_graphs.append(graph)
        return graph.compiler()(gm, example_inputs)

    def _build(
        self, gm: torch.fx.GraphModule, lifted: LiftedGraph, record: GraphRecord
    ) -> Callable[..., Any]:
        started = time.perf_counter()
        try:
            compiled = self.compile_graph(lifted)
        except DoraError as exc:
            first = str(exc).splitlines()[0]
            record.reason = f"dora_fx could not compile it: {first}"
            warnings.warn(f"dora backend: graph {record.index} runs eagerly: {first}", stacklevel=3)
            return gm.forward
        record.compile_s = time.perf_counter() - started
        record.plan = compiled.plan.to_text()
        record.notes += compiled.notes
        if self.options.runtime == "inprocess":
            return lambda *args: compiled(*lifted.user_args(args))
        call = self._session(compiled, lifted)
        trainable = any(w.requires_grad for w in lifted.weights.values())

        def served(*args: Any) -> Any:
            if trainable and torch.is_grad_enabled():  # the ranks record no autograd graph
                if _EAGER_NOTE not in record.notes:
                    record.notes.append(_EAGER_NOTE)
                return gm.forward(*args)
            return call(*lifted.user_args(args))

        return served

    def explain(self) -> str:
        lines = [f"dora backend: {len(self.records)} graph(s) compiled"]
        for record in self.records:
            lines += record.describe(self.options.min_flops)
        return "\n".join(lines)

    def compile_graph(self, lifted: LiftedGraph, training: bool = False) -> CompiledModel:
        """``dora_fx.compile`` of a lifted graph with this backend's options. ``training``:
        AOTAutograd's forward, run as one microbatch (its saved tensors are whole-batch
        outputs; some have no batch dim to join microbatches along)."""
        options = dict(self.options.compile_options)
        if any(dim == 1 for _, dim in lifted.dynamic_dims):
            options.setdefault("seq_dim", 1)
        extra = []
        if training and options.get("microbatches") not in (None, 1):
            extra.append(
                f"microbatches={options['microbatches']} ignored: a training graph's forward "
                "runs as one microbatch (its backward is cut per stage, not per microbatch)"
            )
        if training:
            options["microbatches"] = 1
        module = lifted.module.eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # the user's own weights: gradients reach them, their optimizer's steps reach us
            compiled = compile(
                module, self.options.devices, self.options.qoe,
                example_inputs=lifted.example_inputs, share_weights=True, **options,
            )  # fmt: skip
        # e.g. a graph Dynamo specialized to one batch size: said in explain, not warned
        compiled.notes += [str(w.message) for w in caught if str(w.message) not in compiled.notes]
        compiled.notes += extra
        return compiled

    def _session(self, compiled: CompiledModel, lifted: LiftedGraph) -> Callable[..., Any]:
        """The compiled graph served by one process per device, kept up for the calls."""
        from ..runtime.distributed.session import Session

        folder = tempfile.TemporaryDirectory(prefix="dora_backend_")
        compiled.save(folder.name)
        session = Session(folder.name, lifted.example_inputs, emulate=False)
        self._sessions.append((session, folder))
        atexit.register(_close, session, folder)
        counter = iter(range(1 << 62))

        def call(*inputs: Any) -> Any:
            rid = next(counter)
            session.submit([(rid, tuple(inputs))])
            return session.wait([rid])[rid]

        return call


_last: DoraBackend | None = None


def last_backend() -> DoraBackend | None:
    """The backend that compiled the latest graph, if any."""
    return _last


_EAGER_NOTE = (
    "called with autograd on and weights that need gradients: ran eagerly so gradients flow "
    "(the distributed runtime serves inference; use runtime='inprocess' to train)"
)


def _close(session: Any, folder: tempfile.TemporaryDirectory[str]) -> None:
    session.close()
    folder.cleanup()


def _ops(gm: torch.fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module"))


def _count_flops(lifted: LiftedGraph) -> float:
    """The graph's FLOPs, run once on its example inputs; buffers it updates in place (batch
    norm's running statistics in training mode) are put back as they were."""
    buffers = [b for b in lifted.module.buffers()]
    kept = [b.clone() for b in buffers]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        lifted.module(*lifted.example_inputs)
        for buffer, value in zip(buffers, kept, strict=True):
            buffer.copy_(value)
    return float(counter.get_total_flops())
