"""Distributed runtime, runner: one rank executing its stage's action list.

Every rank takes the compiled schedule from the plan folder (``artifact.PlanFolder.schedule``)
and executes its stage's actions once per request, microbatch ``mb`` of
request ``r`` being item ``r * microbatches + mb`` of the transport:

* ``POST``: registers the receive (``DistTransport.post``; receiver threads always have one
  posted);
* ``WAIT``: blocks until the value has arrived (all its chunks, all the pieces of a
  data-parallel sender group) and hands it to the segments;
* ``F<k>``: runs segment ``k`` of the stage (``runtime.segments``: the stage file's
  ``segment_k`` method) under the compute stretch of emulation and the run's grad mode; the
  first segment of an item takes the item's user inputs, the last one returns the stage's
  outputs, which go to rank 0 (a data-parallel member the batch split gives no rows of the
  item computes nothing: ``transport``);
* ``SEND``: hands the value the segments produced to the transport, in the action's chunks,
  without blocking;
* ``SENT``: blocks until that send has left (emulated: its last bit left the emulated link).

Between requests the schedule is software-pipelined the way the ``overlap`` lowering
pipelines microbatches (SENT of microbatch ``k - 1`` after the compute of ``k``): the SENTs of
request ``r``'s last microbatch that close its list are executed after the first segment of
request ``r + 1``, so the device computes the next request while the last sends drain, as the
simulator of schedules (``sim.scheduled``) has it. Under the ``naive`` policy nothing is
deferred. Every executed action is recorded (``trace``), so a test
can check that a rank ran its list in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...ir.comm_ops import use_transport
from ...ir.schedule import Action, Kind, ScheduleError, StageSchedule
from ..compute_emulation import ComputeStretch
from ..cost_recorder import CostRecorder, OpCost
from ..segments import SegmentProgram, StageView
from .transport import DistTransport, Sending

__all__ = ["StageRunner", "TRACE_LIMIT"]

TRACE_LIMIT = 4096  # executed actions kept per rank


@dataclass
class _Item:
    """What one microbatch of one request has in flight on this rank."""

    view: StageView
    state: Any = None
    cpu_s: float = 0.0
    sendings: dict[tuple[int, int], list[Sending]] = field(default_factory=dict)
    sends_left: int = 0  # SEND actions of the item still to run


class StageRunner:
    """Executes one stage's actions, request after request (see the module doc)."""

    def __init__(
        self,
        stage: int,
        actions: StageSchedule,
        pipelined: bool,
        microbatches: int,
        program: SegmentProgram,
        transport: DistTransport,
        grad: bool = False,
    ) -> None:
        if actions.segments_used() != program.count:
            raise ScheduleError(
                f"stage {stage} has {program.count} segment(s) but its schedule computes "
                f"{actions.segments_used()}"
            )
        self.stage, self.actions, self.m = stage, actions.actions, microbatches
        self.program, self.transport = program, transport
        self.grad = grad  # autograd on while computing (training's forward), off for inference
        self.stretch = ComputeStretch(None)
        last_compute = max(i for i, a in enumerate(self.actions) if a.kind is Kind.COMPUTE)
        last_mb = max(a.mb for a in self.actions)
        self._deferrable = {
            i for i in range(last_compute + 1, len(self.actions))
            if pipelined and self.actions[i].kind is Kind.SENT and self.actions[i].mb == last_mb
        }  # fmt: skip
        self._items: dict[int, _Item] = {}
        self._sends = [sum(1 for a in self.actions if a.kind is Kind.SEND and a.mb == mb)
                       for mb in range(microbatches)]  # fmt: skip
        self._deferred: list[tuple[int, Action]] = []  # (request, SENT) of the previous request
        self.trace: list[tuple[int, str, float, float]] = []  # request, action, start, end
        self.record_item: int | None = None  # the item whose ops are recorded
        self.recorded: list[OpCost] = []
        self.on_item_done: Callable[[int, float], None] | None = None  # item, compute CPU s
        self.rows = 0  # rows of the items this rank computed (data-parallel members: its share)

    def run_request(self, request: int) -> None:
        flushed = not self._deferred
        for i, action in enumerate(self.actions):
            if i in self._deferrable:
                self._deferred.append((request, action))
                continue
            self._execute(request, action)
            if not flushed and action.kind is Kind.COMPUTE:
                self.flush()
                flushed = True

    def flush(self) -> None:
        """Execute the SENTs deferred from the previous request."""
        deferred, self._deferred = self._deferred, []
        for request, action in deferred:
            self._execute(request, action)

    def _execute(self, request: int, action: Action) -> None:
        item = request * self.m + action.mb
        state = self._items.get(item)
        if state is None:
            state = self._items[item] = _Item(
                StageView(self.stage, action.mb), sends_left=self._sends[action.mb]
            )
        started = time.monotonic()
        transport = self.transport
        if action.kind is Kind.POST:
            transport.post(item, action.peer, action.index)
        elif action.kind is Kind.WAIT:
            value = transport.wait(item, action.peer, action.index)
            state.view.received[(action.peer, action.index)] = value
        elif action.kind is Kind.COMPUTE:
            self._compute(item, state, action.index)
        elif action.kind is Kind.SEND:
            key = (action.peer, action.index)
            state.sends_left -= 1
            if state.state is _SAT_OUT:  # no rows of this item: nothing to send
                state.sendings[key] = []
            else:
                tensor = state.view.take(action.peer, action.index, action)
                state.sendings[key] = transport.send(
                    item, tensor, action.peer, action.index, action.chunks
                )
        else:
            transport.sent(state.sendings.pop((action.peer, action.index)))
        if len(self.trace) < TRACE_LIMIT:
            self.trace.append((request, str(action), started, time.monotonic()))
        done = state.state is _DONE or state.state is _SAT_OUT
        if done and not state.sends_left and not state.sendings and not state.view.outbox:
            del self._items[item]

    def _compute(self, item: int, state: _Item, segment: int) -> None:
        if state.state is _SAT_OUT:
            return
        if state.state is None:
            inputs = self.transport.inputs(item)
            if self.transport.sits_out(item):
                # the batch split gives this data-parallel member no rows of the item
                # (ir.batch_split): it computes nothing, and its peers wait for nothing of it
                state.state = _SAT_OUT
                return
            self.rows += self.transport.rows(item) or 0
            state.state = self.program.start(inputs)
        recorder = CostRecorder() if item == self.record_item else None
        cpu_before = self.stretch.busy_cpu_s
        self.stretch.resume()
        with torch.set_grad_enabled(self.grad), use_transport(state.view):  # type: ignore[arg-type]
            if recorder is not None:
                with recorder:
                    outputs = self.program.run(state.state, segment)
                self.recorded += recorder.ops
            else:
                outputs = self.program.run(state.state, segment)
        self.stretch.settle()
        state.cpu_s += self.stretch.busy_cpu_s - cpu_before
        if outputs is not None:
            self.transport.send_outputs(item, outputs)
            state.state = _DONE
            if self.on_item_done is not None:
                self.on_item_done(item, state.cpu_s)


_DONE = object()  # an item whose segments have all run
_SAT_OUT = object()  # an item of which this data-parallel member holds no rows
