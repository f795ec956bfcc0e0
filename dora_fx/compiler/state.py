"""``CompileState``: everything the passes of ``compiler.pipeline`` read and write, in the
order they fill it in (the model and its options first, the generated stages last)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..analysis.problem import Problem
from ..analysis.training import TrainMetrics
from ..cost_models.cluster import Cluster
from ..ir.call_spec import CallSpec
from ..ir.plan import Plan
from ..ir.schedule import Schedule
from ..ir.stage_module import StageModule
from ..planner import PlanSet
from ..qoe import QoE
from .capture import Captured
from .passes.annotate_costs import CostSymbols
from .passes.coarsen import BlockChain
from .passes.insert_comm import StageProgram
from .passes.schedule_comm import ScheduleChoice

__all__ = ["CompileState"]


@dataclass
class CompileState:
    model: torch.nn.Module
    example_inputs: tuple[Any, ...]
    example_kwargs: dict[str, Any]
    cluster: Cluster | None = None  # None: the front end alone (``pipeline.front_end``)
    qoe: QoE = field(default_factory=QoE)
    num_stages: int | None = None
    seq_dim: int | None = None
    max_blocks: int = 100
    given_plan: Plan | None = None
    plan_set: PlanSet | None = None
    captured: Captured | None = None
    symbols: CostSymbols | None = None
    missing_formulas: list[str] = field(default_factory=list)
    chain: BlockChain | None = None
    problem: Problem | None = None
    plan: Plan | None = None
    programs: list[StageProgram] = field(default_factory=list)
    microbatches: int | None = None  # None: schedule_comm picks the count by simulation
    optimizer: str = "adamw"  # a training plan's optimizer (cost_models.train_costs.OPTIMIZERS)
    for_training: bool = False  # compile(mode="train"): captured in training mode on purpose
    schedule_choice: ScheduleChoice | None = None
    # mode="train": the training iteration's figures (schedule policy, microbatches, memory per
    # device, iteration time, energy); the planner's, or evaluated for a pinned plan
    training: TrainMetrics | None = None
    stages: list[StageModule] = field(default_factory=list)
    call: CallSpec | None = None  # the call the model was captured for (codegen)

    @property
    def schedule(self) -> Schedule | None:
        return None if self.schedule_choice is None else self.schedule_choice.schedule


