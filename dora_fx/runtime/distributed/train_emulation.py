"""Distributed training, emulation set-up: the compute stretch and the network shaping of
inference runs (``emulation.start_emulation``), with one training step as the unit.

With ``TrainConfig.emulate`` every rank first runs two warm-up steps (steps ``-2`` and ``-1``:
the first step's batch, forward and backward over every microbatch, not emulated). The first
records the stage's ops, forward and backward (``cost_recorder``); the second measures their
host CPU time, warm and without the recorder (recording costs more CPU per op than many ops
themselves, and the first step pays one-time costs: timing that step made emulated steps up
to 60% faster than the devices). The warm-up steps' gradients are dropped, the optimizer is
not stepped and the stage's buffers (batch norm's running statistics) are put back, so the
weights the measured steps start from are the ones they would start from without it. The
ranks then agree on one dilation and install the stretch (F and B last the device's predicted
time for those ops) and the link shaper (activations, gradients, inputs and targets shaped on
the plan's links and shared media).

The stretch's reference (the host CPU seconds a step's compute is scaled against) follows the
run, as inference's ``CpuSamples`` does per item: after every step ``StepEmulation.after_step``
appends the step's CPU time and rescales, so steps last the device's predicted time on
average while the host warms up (its CPU per step kept falling 10-20% over the first steps:
a reference fixed at the warm-up made later steps faster than the device).

The optimizer's step lasts the device's predicted step (``StepEmulation.step_optimizer``:
``train_costs.optimizer_step_costs`` of the stage's trainable bytes and tensors, for the
optimizer the rank runs), paced to it directly rather than scaled from its host CPU time: the
step's work does not depend on the batch, and its CPU time did not predict it (a warm probe of
the same recipe took a third of the steps' CPU time; the first step also creates the state).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ...analysis.training import optimizer_step_s
from ...artifact.manifest import PlanFolder
from ...cost_models.cluster import Cluster
from ...cost_models.device import Device
from ..compute_emulation import ComputeStretch, CpuSamples, sleep_until
from .config import RunConfig
from .emulation import start_emulation
from .train_config import TrainConfig
from .train_runner import TrainRunner
from .wiring import RankInfo, StageWiring

__all__ = ["StepEmulation", "emulate_training"]

RECORD_STEP, TIMING_STEP = -2, -1  # the warm-up steps (see the module doc)


@dataclass
class StepEmulation:
    """A rank's emulation once installed: the dilation, the device's predicted compute
    seconds per step and optimizer step; ``after_step`` keeps the stretch's reference on the
    steps' CPU times (none of it without emulation)."""

    time_scale: float = 1.0
    device_step_s: float = 0.0
    samples: CpuSamples = field(default_factory=CpuSamples)
    device_optimizer_s: float = 0.0  # one optimizer step on the device, predicted (0: none)

    def step_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``, lasting the device's predicted step under emulation (longer
        only if the host itself takes longer)."""
        started = time.monotonic()
        optimizer.step()
        if self.device_optimizer_s > 0:
            sleep_until(started + self.time_scale * self.device_optimizer_s)

    def after_step(self, runner: TrainRunner) -> None:
        """Rescale the compute stretch to the steps' mean CPU time (see the module doc)."""
        if runner.stretch.factor is None:
            return
        self.samples.append(runner.compute_cpu_s)
        reference = self.samples.reference_s(stream_start=1)  # 0: the warm-up's
        if reference > 0:
            runner.stretch.factor = self.time_scale * self.device_step_s / reference


def emulate_training(
    config: TrainConfig,
    folder: PlanFolder,
    me: RankInfo,
    wiring: StageWiring,
    runner: TrainRunner,
    module: torch.nn.Module,
    control: Any,
    feed: Any,
) -> StepEmulation:
    """Warm up, agree on the dilation, install stretch and shaper (see the module doc);
    a ``StepEmulation`` that does nothing without emulation. ``feed(step)``: rank 0 feeds a warm-up step (others: None).
    A collective: every rank calls it."""
    if not config.emulate:
        return StepEmulation()
    buffers = {k: b.detach().clone() for k, b in module.named_buffers()}
    for step in (RECORD_STEP, TIMING_STEP):
        runner.record = step == RECORD_STEP
        if feed is not None:
            feed(step)
        runner.run_step(step, config.batches[0])
        for p in module.parameters():
            p.grad = None
    runner.record = False
    with torch.no_grad():
        for key, buffer in module.named_buffers():
            buffer.copy_(buffers[key])
    cpu_s = runner.compute_cpu_s
    run = RunConfig(
        plan_dir=config.plan_dir, requests_path="", host=config.host, emulate=True,
        time_scale=config.time_scale, compute_reference=config.compute_reference,
        ledger_path=config.ledger_path,
    )  # fmt: skip
    emulation = start_emulation(
        run, folder.cluster, me, wiring, folder.schedule.contention, runner.recorded, cpu_s,
        cpu_s, 1.0, control,
    )  # fmt: skip
    runner.stretch = ComputeStretch(emulation.stretch_factor)
    runner.transport.shaper = emulation.shaper
    runner.recorded = []
    samples = CpuSamples()
    samples.append(cpu_s)
    assert folder.cluster is not None  # start_emulation refuses a plan without one
    device = Cluster.from_json(folder.cluster).device(me.device)
    optimizer_s = _module_optimizer_s(device, optimizer_kind(config.optimizer), module)
    return StepEmulation(emulation.time_scale, emulation.device_item_s, samples, optimizer_s)


def optimizer_kind(recipe: dict[str, Any]) -> str:
    """The planner's name (``train_costs.OPTIMIZER_STEPS``) for the optimizer a rank runs;
    AdamW's (the most state and work) for one it does not know."""
    name = recipe["class"].rpartition(":")[2].rpartition(".")[2].lower()
    if name == "sgd":
        return "sgd-momentum" if recipe["kwargs"].get("momentum") else "sgd"
    return name if name in ("adam", "adamw") else "adamw"


def _module_optimizer_s(device: Device, kind: str, module: torch.nn.Module) -> float:
    """One optimizer step over ``module``'s trainable parameters on ``device``, priced as the
    planner prices a stage's (``analysis.training.optimizer_step_s``)."""
    params = [p for p in module.parameters() if p.requires_grad]
    trainable = float(sum(p.numel() * p.element_size() for p in params))
    return optimizer_step_s(device, kind, trainable, len(params))
