"""In-process runtime: run every stage in this process, passing tensors through the send/recv
nodes. It returns exactly what the model returns, same pytree.

When the stages carry a schedule (``transfers["schedule"]``, written by ``schedule_comm``),
the runtime executes it: the batch is cut into the schedule's microbatches along each input's
batch dim, every stage's actions run interleaved (``dora_fx.ir.execute``), a COMPUTE
runs one segment of the stage graph for one microbatch, a SEND hands the value over in its
chunks (keyed by source, destination, tag and microbatch) and the WAIT joins them, and the
outputs are joined back along their batch dims. Without a schedule (an older plan folder) the
stages run one after another on the whole batch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..errors import InputError
from ..ir.batch_split import split_sizes
from ..ir.comm_ops import Mailbox, use_transport
from ..ir.execute import execute
from ..ir.lowering import Step, lower, relower
from ..ir.schedule import Action, Kind, Schedule, ScheduleError, StageSchedule
from ..ir.stage_module import StageModule
from .data_parallel import join_along, run_replicated, slice_along
from .inputs import check_input_tensors, flatten_inputs
from .segments import SegmentProgram, StageView, segment_program

__all__ = ["LocalPipeline", "stage_programs"]


class LocalPipeline:
    """Calls stages one after another; a stage's sends land in a mailbox its receivers read."""

    def __init__(
        self,
        stages: Sequence[StageModule],
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        input_meta: Sequence[tuple[int, torch.dtype] | None] = (),
        input_batch_dims: Sequence[int | None] = (),
        input_shapes: Sequence[Sequence[int | str] | None] = (),
    ) -> None:
        self.stages = list(stages)
        self.in_spec, self.out_spec = in_spec, out_spec
        self.input_meta = list(input_meta)
        self.input_batch_dims = list(input_batch_dims) or [None] * len(self.input_meta)
        self.input_shapes: list[list[int | str] | None] = [
            None if s is None else list(s) for s in input_shapes
        ] or [None] * len(self.input_meta)
        self.num_outputs = sum(len(s.output_indices) for s in self.stages)
        # rows of the last call each device computed (a data-parallel member: its share)
        self.last_rows: dict[str, int] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = flatten_inputs(args, kwargs, self.in_spec)
        self._check_tensors(flat)
        if all(s.schedule_entry for s in self.stages):
            run = _ScheduledRun(self, flat)
            with torch.no_grad():
                joined = run.run()
            self.last_rows = run.rows
            return pytree.tree_unflatten(joined, self.out_spec)
        outputs: list[Any] = [None] * self.num_outputs
        mailbox = Mailbox()
        with torch.no_grad(), use_transport(mailbox):
            for stage in self.stages:
                mailbox.stage = stage.index
                if len(stage.shares) > 1:
                    produced = self._run_data_parallel(stage, flat, mailbox)
                else:
                    produced = stage.module(*[flat[i] for i in stage.input_indices])
                for index, value in zip(stage.output_indices, produced):
                    outputs[index] = value
        if mailbox.pending:
            raise RuntimeError(f"values sent but never received: {mailbox.pending}")
        return pytree.tree_unflatten(outputs, self.out_spec)

    def _run_data_parallel(self, stage: StageModule, flat: list[Any], mailbox: Mailbox) -> list[Any]:
        batch = self._batch_size(flat)
        if batch is None:
            raise InputError(
                f"stage {stage.index} is data-parallel over {', '.join(stage.devices)} but the "
                "model was captured with a static batch, so its batch cannot be split"
            )
        received = {
            (r["peer"], r["tag"]): mailbox.take(r["peer"], stage.index, r["tag"])
            for r in stage.transfers.get("recvs", [])
        }
        sent, outputs = run_replicated(
            stage.module,
            [flat[i] for i in stage.input_indices],
            [self.input_batch_dims[i] for i in stage.input_indices],
            received,
            stage.transfers,
            split_sizes(batch, stage.shares),
        )
        for (peer, tag), tensor in sent.items():
            mailbox.send(tensor, peer, tag)
        return outputs

    def _batch_size(self, flat: list[Any]) -> int | None:
        for value, dim in zip(flat, self.input_batch_dims):
            if dim is not None and isinstance(value, torch.Tensor):
                return int(value.shape[dim])
        return None

    def _check_tensors(self, flat: list[Any]) -> None:
        check_input_tensors(flat, self.input_meta, self.input_shapes)


def _segment_level() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("DORA_DEBUG", "DORA_SEGMENTS"))


def _whole_steps(stage: StageModule, scheduled: StageSchedule) -> list[Step]:
    """A stage run whole: receive everything, compute, send (from its recorded transfers),
    each send in the chunks its schedule gives it."""
    chunks = {(a.index, a.peer): a.chunks for a in scheduled.actions if a.kind is Kind.SEND}
    recvs = [Step("recv", r["tag"], r["peer"]) for r in stage.transfers.get("recvs", [])]
    sends = [
        Step("send", t["tag"], t["peer"], chunks=chunks.get((t["tag"], t["peer"]), 1))
        for t in stage.transfers.get("sends", [])
    ]
    return [*recvs, Step("compute", 0), *sends]


def stage_programs(stages: Sequence[StageModule]) -> dict[int, SegmentProgram]:
    """Segment programs of the stages that run segment by segment (all but data-parallel
    ones, which run whole), checked against their schedules' segment counts."""
    programs: dict[int, SegmentProgram] = {}
    for stage in stages:
        if len(stage.shares) > 1:
            continue
        program = segment_program(stage.module, stage.code)
        entry = stage.schedule_entry
        if entry is not None:
            used = StageSchedule.from_text(stage.index, entry["actions"]).segments_used()
            if used != program.count:
                raise ScheduleError(
                    f"stage {stage.index} has {program.count} segment(s) but its schedule "
                    f"computes {used}"
                )
        programs[stage.index] = program
    return programs


class _ScheduledRun:
    """One call of a scheduled pipeline: the state every action reads and writes."""

    def __init__(self, pipeline: LocalPipeline, flat: list[Any]) -> None:
        self.pipeline, self.stages = pipeline, {s.index: s for s in pipeline.stages}
        entries = [s.schedule_entry for s in pipeline.stages]
        schedule = Schedule.from_stage_entries(entries)  # type: ignore[arg-type]
        batch = pipeline._batch_size(flat)
        m = 1 if batch is None else max(1, min(schedule.microbatches, batch))
        # In one process nothing overlaps, so by default each stage runs its forward whole
        # per microbatch (at eager speed) under the schedule relowered for one segment per
        # stage. Segment-level execution (DORA_DEBUG=1 or DORA_SEGMENTS=1) runs each COMPUTE
        # as that segment alone (``runtime.segments``: graph nodes of a compiled stage, the
        # saved forward's statements of a loaded one), in schedule order.
        self.programs = stage_programs(pipeline.stages) if _segment_level() else {}
        self.whole = {s.index: s.index not in self.programs for s in pipeline.stages}
        if self.programs:  # data-parallel stages have one segment in their schedule anyway
            schedule = relower(schedule, m)
        else:
            steps = [_whole_steps(s, scheduled) for s, scheduled in zip(pipeline.stages, schedule.stages)]
            schedule = lower(steps, m, schedule.policy, schedule.contention)
        self.schedule = schedule
        dims = pipeline.input_batch_dims
        self.sizes = [batch or 0] if batch is None or m == 1 else split_sizes(batch, [1.0] * m)
        starts = [sum(self.sizes[:k]) for k in range(m)]
        self.inputs = [
            [slice_along(x, d if m > 1 else None, start, size) for x, d in zip(flat, dims)]
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
        module = self.stages[stage]
        inputs = [self.inputs[mb][i] for i in module.input_indices]
        sizes = split_sizes(self.sizes[mb], module.shares)
        if segment == 0:
            for device, size in zip(module.devices, sizes):
                self.rows[device] = self.rows.get(device, 0) + size
        if self.whole[stage] and len(module.shares) == 1:  # its forward, whole
            with use_transport(view):
                self.outputs[(stage, mb)] = list(module.module(*inputs))
            return
        if self.whole[stage]:  # data-parallel: every replica runs the whole stage
            dims = self.pipeline.input_batch_dims
            sent, outputs = run_replicated(
                module.module,
                inputs,
                [dims[i] for i in module.input_indices],
                view.received,
                module.transfers,
                sizes,
            )
            view.outbox.update(sent)
            self.outputs[(stage, mb)] = outputs
            return
        program = self.programs[stage]
        state = self.states.get((stage, mb))
        if state is None:
            state = self.states[(stage, mb)] = program.start(inputs)
        with use_transport(view):
            produced = program.run(state, segment)
        if produced is not None:
            self.outputs[(stage, mb)] = produced
            del self.states[(stage, mb)]
