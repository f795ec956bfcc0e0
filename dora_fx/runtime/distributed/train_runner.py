"""Distributed training, runner: one rank executing its stage's training actions of one step
(``ir.train_schedule``), microbatch ``mb`` of step ``s`` being item ``s * m + mb``:

* ``RECV``: the activation from the earlier stage, as a leaf that requires grad when its
  gradient flows back (a float tensor), so the backward leaves its gradient in ``.grad``;
* ``F``: the whole stage (every segment, ``runtime.segments``) with autograd recording, its
  graph kept for the microbatch's ``B``; on the last stage ``loss_fn(output, target)`` on the
  rank's rows, weighted by its rows over the step's batch (``runtime.train_step``'s rule: for
  a mean loss the weighted sum over microbatches and members is the un-split loss);
* ``SEND``: the activation the segments produced (the graph keeps it for ``B``);
* ``GRECV``: the gradient of an activation this rank sent;
* ``B``: ``torch.autograd.backward`` of the microbatch's outputs with the gradients received
  (the weighted loss on the last stage), freeing its graph; gradients accumulate in the
  stage's parameters;
* ``GSEND``: the received activations' ``.grad`` back to where they came from (zeros where
  the stage did not use one differentiably);
* ``REDUCE``: the gradient sums over the ranks holding each parameter (``train_reduce``).

A data-parallel member the batch split gives no rows of an item still takes its (empty)
pieces but computes, sends and weights nothing. Compute (F and B) runs under the emulation's
compute stretch when one is installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from ...ir.call_spec import CallSpec
from ...ir.comm_ops import use_transport
from ...ir.train_schedule import TKind, TrainAction
from ..compute_emulation import ComputeStretch
from ..cost_recorder import CostRecorder, OpCost
from ..segments import SegmentProgram, StageView
from ..train_step import _check_loss
from .train_reduce import GradientGroups
from .train_transport import TrainTransport

TRACE_LIMIT = 4096

__all__ = ["TrainRunner"]

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class _Item:
    view: StageView
    sat_out: bool = False
    leaves: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # received
    sent: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # with their graph
    grads: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # received
    loss: torch.Tensor | None = None
    sendings: list[Any] = field(default_factory=list)


class TrainRunner:
    """Executes one stage's training actions, step after step (see the module doc)."""

    def __init__(
        self,
        stage: int,
        actions: Sequence[TrainAction],
        microbatches: int,
        program: SegmentProgram,
        transport: TrainTransport,
        reduction: GradientGroups,
        grad_tags: set[tuple[int, int]],
        last: tuple[LossFn, CallSpec, Any] | None = None,
    ) -> None:
        """``grad_tags``: the (peer stage, tag) transfers whose gradient flows back.
        ``last``: on the last stage, the loss, the call spec and the targets' pytree spec."""
        self.stage, self.actions, self.m = stage, list(actions), microbatches
        self.program, self.transport, self.reduction = program, transport, reduction
        self.grad_tags, self.last = grad_tags, last
        self.stretch = ComputeStretch(None)
        self._items: dict[int, _Item] = {}
        self._closing = {  # the last action of each microbatch: the item is done after it
            max(i for i, a in enumerate(self.actions) if a.mb == mb) for mb in range(microbatches)
        }
        self.loss = 0.0  # this rank's share of the step's loss
        self.compute_cpu_s = 0.0  # of the last step
        self.record = False  # record the ops of the next step (emulation's warm-up)
        self.recorded: list[OpCost] = []
        self.trace: list[tuple[int, str, float, float]] = []  # step, action, start, end

    def run_step(self, step: int, batch: int) -> float:
        """Execute the step's actions; returns this rank's (weighted) share of its loss.
        ``batch``: the step's rows in all (the loss weights' denominator)."""
        self.loss, self.compute_cpu_s, self._batch = 0.0, 0.0, batch
        for index, action in enumerate(self.actions):
            started = time.monotonic()
            self._execute(step, action)
            if index in self._closing:
                self._done(step * self.m + action.mb)
            self.note(step, str(action), started, time.monotonic())
        return self.loss

    def note(self, step: int, action: str, started: float, ended: float) -> None:
        """One action's wall times in ``trace`` (the first 4096: a long run keeps its start)."""
        if len(self.trace) < TRACE_LIMIT:
            self.trace.append((step, action, started, ended))

    def _execute(self, step: int, action: TrainAction) -> None:
        if action.kind is TKind.REDUCE:
            self.reduction.reduce()
            return
        item = step * self.m + action.mb
        state = self._items.setdefault(item, _Item(StageView(self.stage, action.mb)))
        key = (action.peer, action.tag)
        kind, transport = action.kind, self.transport
        if kind is TKind.RECV:
            value = transport.receive(item, action.peer, action.tag)
            if key in self.grad_tags and value.is_floating_point():
                value = value.detach().requires_grad_(True)
                state.leaves[key] = value
            state.view.received[key] = value
        elif kind is TKind.GRECV:
            grad = transport.grad_wait(item, action.peer, action.tag)
            if not state.sat_out:
                state.grads[key] = grad
        elif state.sat_out:
            return  # no rows of this item: nothing to compute, send or weight
        elif kind is TKind.FORWARD:
            self._forward(item, state)
        elif kind is TKind.SEND:
            tensor = state.view.take(action.peer, action.tag, action)
            if key in self.grad_tags:
                state.sent[key] = tensor
            state.sendings += transport.send(item, tensor, action.peer, action.tag)
        elif kind is TKind.BACKWARD:
            self._backward(state)
        else:  # GSEND
            leaf = state.leaves.pop(key)
            grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            state.sendings += transport.grad_send(item, grad, action.peer, action.tag)

    def _forward(self, item: int, state: _Item) -> None:
        transport = self.transport
        inputs = transport.inputs(item)
        targets = transport.targets(item, self._target_count()) if self.last else []
        if transport.sits_out(item):
            state.sat_out = True
            return
        rows = transport.rows(item) or 0
        env = self.program.start(inputs)
        outputs = None
        with self._computing(), torch.enable_grad(), use_transport(state.view):  # type: ignore[arg-type]
            for segment in range(self.program.count):
                outputs = self.program.run(env, segment)
            if self.last is not None:
                loss_fn, call, spec = self.last
                output = call.unflatten(_in_positions(outputs or [], transport))
                loss = loss_fn(output, pytree.tree_unflatten(targets, spec))
                _check_loss(loss)
                state.loss = loss * (rows / self._batch)
                self.loss += float(state.loss.detach())

    def _backward(self, state: _Item) -> None:
        tensors, grads = [], []
        if state.loss is not None:
            tensors.append(state.loss)
            grads.append(torch.ones_like(state.loss))
        for key, tensor in state.sent.items():
            if tensor.requires_grad:
                tensors.append(tensor)
                grads.append(state.grads[key].to(tensor.dtype))
        with self._computing():
            if tensors:
                torch.autograd.backward(tensors, grads)
        state.sent.clear()
        state.grads.clear()
        state.loss = None

    def _done(self, item: int) -> None:
        state = self._items.pop(item, None)
        if state is not None:
            self.transport.sent(state.sendings)
            self.transport.forget(item)

    def _target_count(self) -> int:
        assert self.last is not None
        return int(self.last[2].num_leaves)

    def _computing(self) -> Any:
        return _Stretched(self)


class _Stretched:
    """Compute under the emulation's stretch, its CPU time counted (and its ops recorded
    when the runner is asked to)."""

    def __init__(self, runner: TrainRunner) -> None:
        self.runner = runner
        self.recorder: CostRecorder | None = None

    def __enter__(self) -> None:
        runner = self.runner
        self.cpu_before = runner.stretch.busy_cpu_s
        runner.stretch.resume()
        if runner.record:
            self.recorder = CostRecorder()
            self.recorder.__enter__()

    def __exit__(self, *exc: object) -> None:
        runner = self.runner
        if self.recorder is not None:
            self.recorder.__exit__(*exc)
            runner.recorded += self.recorder.ops
        runner.stretch.settle()
        runner.compute_cpu_s += runner.stretch.busy_cpu_s - self.cpu_before


def _in_positions(outputs: Sequence[Any], transport: TrainTransport) -> list[Any]:
    """The last stage's outputs in the model's output order (it returns them all)."""
    positions = transport.wiring.output_stages[transport.me.stage]
    flat: list[Any] = [None] * len(positions)
    for position, value in zip(positions, outputs):
        flat[position] = value
    return flat
