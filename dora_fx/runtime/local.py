"""In-process runtime: every stage in this process, executing the compiled schedule. It takes
and returns exactly what the model does (``ir.call_spec.CallSpec``).

A call is cut into the schedule's microbatches along each input's batch dim (fewer when the
batch has fewer rows: the schedule relowered, ``ir.lowering.relower``, once per count), every
stage's actions run interleaved (``ir.execute.execute``: each stage goes until it blocks), a
COMPUTE runs one segment of the stage for one microbatch (``runtime.segments``: the generated
``segment_k`` methods, the same code a saved stage file holds), a SEND hands the value over in
its chunks (keyed by source, destination, tag and microbatch) and the WAIT joins them, and the
outputs are joined back along their batch dims. A data-parallel stage (one segment) runs its
module once per member on that member's rows (``runtime.data_parallel``; the split is
``ir.batch_split``'s, as in the distributed runtime).

The stages run under the caller's grad mode and in the pipeline's train/eval mode
(``train()``, ``eval()``), nothing forced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InputError
from ..ir.batch_split import split_sizes
from ..ir.call_spec import CallSpec
from ..ir.comm_ops import use_transport
from ..ir.execute import execute
from ..ir.lowering import relower
from ..ir.schedule import Action, Kind, Schedule, ScheduleError
from ..ir.stage_module import StageModule
from .data_parallel import join_along, run_replicated, slice_along
from .segments import SegmentProgram, StageView

__all__ = ["LocalPipeline"]


class LocalPipeline:
    """The stages of a plan, run in this process under their compiled schedule."""

    def __init__(
        self,
        stages: Sequence[StageModule],
        call: CallSpec,
        schedule: Schedule,
        training: bool = False,
    ) -> None:
        self.stages = list(stages)
        self.call, self.schedule = call, schedule
        self.num_outputs = sum(len(s.output_indices) for s in self.stages)
        self.programs = {s.index: SegmentProgram(s.module) for s in self.stages}
        for stage in self.stages:
            used = schedule.stages[stage.index].segments_used()
            if used != self.programs[stage.index].count:
                raise ScheduleError(
                    f"stage {stage.index} has {self.programs[stage.index].count} segment(s) "
                    f"but its schedule computes {used}"
                )
        self._schedules = {schedule.microbatches: schedule}
        # rows of the last call each device computed (a data-parallel member: its share)
        self.last_rows: dict[str, int] = {}
        self.on_compute: Callable[[int], None] | None = None  # told each stage index computing
        self.train(training)

    def train(self, mode: bool = True) -> LocalPipeline:
        """Put every stage module in training (or eval) mode, as ``nn.Module.train`` does. The
        captured graph fixes what its ops do (a model captured in eval mode runs dropout and
        batch norm as in eval mode); this sets what the modules report."""
        self.training = mode
        for stage in self.stages:
            stage.module.train(mode)
        return self

    def eval(self) -> LocalPipeline:
        return self.train(False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call.unflatten(self.run_flat(self.call.flatten(args, kwargs)))

    def run_flat(self, flat: list[Any], microbatches: int | None = None) -> list[Any]:
        """The flat outputs for the flat inputs, under the schedule (relowered for
        ``microbatches``, or for fewer when the batch has fewer rows)."""
        run = _ScheduledRun(self, flat, microbatches)
        joined = run.run()
        self.last_rows = run.rows
        return joined

    def schedule_for(self, batch: int | None, microbatches: int | None = None) -> Schedule:
        """The compiled schedule, relowered for ``microbatches`` (default: the compiled count)
        or fewer when a batch has fewer rows."""
        wanted = self.schedule.microbatches if microbatches is None else microbatches
        m = 1 if batch is None else max(1, min(wanted, batch))
        if m not in self._schedules:
            self._schedules[m] = relower(self.schedule, m)
        return self._schedules[m]


class _ScheduledRun:
    """One call of a scheduled pipeline: the state every action reads and writes."""

    def __init__(
        self, pipeline: LocalPipeline, flat: list[Any], microbatches: int | None = None
    ) -> None:
        self.pipeline, self.stages = pipeline, {s.index: s for s in pipeline.stages}
        batch = pipeline.call.batch_size(flat)
        self.schedule = pipeline.schedule_for(batch, microbatches)
        m = self.schedule.microbatches
        self.sizes: list[int | None] = (
            [batch] if batch is None or m == 1 else list(split_sizes(batch, [1.0] * m))
        )
        starts = [sum(s or 0 for s in self.sizes[:k]) for k in range(m)]
        dims = pipeline.call.batch_dims
        self.inputs = [
            [slice_along(x, d if m > 1 else None, start, size or 0) for x, d in zip(flat, dims)]
            for start, size in zip(starts, self.sizes)
        ]
        self.views = {(k, mb): StageView(k, mb) for k in self.stages for mb in range(m)}
        self.states: dict[tuple[int, int], Any] = {}
        self.messages: dict[tuple[int, int, int, int], list[torch.Tensor]] = {}
        self.outputs: dict[tuple[int, int], list[Any]] = {}
        self.rows: dict[str, int] = {}

    def run(self) -> list[Any]:
        execute(self.schedule, self._act)
        if self.messages:
            raise ScheduleError(f"sent but never received (src, dst, tag, mb): {sorted(self.messages)}")
        joined: list[Any] = [None] * self.pipeline.num_outputs
        m = len(self.sizes)
        for k, stage in self.stages.items():
            dims = [None if o is None else o.get("batch_dim") for o in stage.transfers.get("outputs", [])]
            for j, index in enumerate(stage.output_indices):
                pieces = [self.outputs[(k, mb)][j] for mb in range(m)]
                joined[index] = join_along(pieces, dims[j] if j < len(dims) and m > 1 else None)
        return joined

    def _act(self, stage: int, action: Action) -> None:
        view = self.views[(stage, action.mb)]
        if action.kind is Kind.COMPUTE:
            self._compute(stage, action.mb, action.index, view)
        elif action.kind is Kind.SEND:
            tensor = view.take(action.peer, action.index, action)
            pieces = [tensor]
            if action.chunks > 1 and tensor.dim() > 0:
                pieces = list(torch.tensor_split(tensor, action.chunks, dim=0))
            self.messages[(stage, action.peer, action.index, action.mb)] = pieces
        elif action.kind is Kind.WAIT:
            pieces = self.messages.pop((action.peer, stage, action.index, action.mb))
            value = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
            view.received[(action.peer, action.index)] = value

    def _compute(self, stage: int, mb: int, segment: int, view: StageView) -> None:
        if self.pipeline.on_compute is not None:
            self.pipeline.on_compute(stage)
        module = self.stages[stage]
        inputs = [self.inputs[mb][i] for i in module.input_indices]
        if len(module.shares) > 1:  # data-parallel: one segment, run once per member
            self.outputs[(stage, mb)] = self._replicated(module, inputs, self.sizes[mb], view)
            return
        if segment == 0 and self.sizes[mb] is not None:
            device = module.devices[0]
            self.rows[device] = self.rows.get(device, 0) + (self.sizes[mb] or 0)
        program = self.pipeline.programs[stage]
        state = self.states.get((stage, mb))
        if state is None:
            state = self.states[(stage, mb)] = program.start(inputs)
        with use_transport(view):
            produced = program.run(state, segment)
        if produced is not None:
            self.outputs[(stage, mb)] = produced
            del self.states[(stage, mb)]

    def _replicated(
        self, module: StageModule, inputs: list[Any], batch: int | None, view: StageView
    ) -> list[Any]:
        if batch is None:
            raise InputError(
                f"stage {module.index} is data-parallel over {', '.join(module.devices)} but the "
                "model was captured with a static batch, so its batch cannot be split"
            )
        sizes = split_sizes(batch, module.shares)
        for device, size in zip(module.devices, sizes):
            self.rows[device] = self.rows.get(device, 0) + size
        dims = self.pipeline.call.batch_dims
        sent, outputs = run_replicated(
            module.module,
            inputs,
            [dims[i] for i in module.input_indices],
            view.received,
            module.transfers,
            sizes,
        )
        view.outbox.update(sent)
        return outputs
