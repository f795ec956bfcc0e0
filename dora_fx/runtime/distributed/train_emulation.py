"""Distributed training, emulation set-up: the compute stretch and the network shaping of
inference runs (``emulation.start_emulation``), with one training step as the unit.

With ``TrainConfig.emulate`` every rank first runs a warm-up step (step ``-1``: the first
step's batch, forward and backward over every microbatch, not emulated): it records the
stage's ops, forward and backward (``cost_recorder``), and their host CPU time. That step's
gradients are dropped, the optimizer is not stepped and the stage's buffers (batch norm's
running statistics) are put back, so the weights the measured steps start from are the ones
they would start from without it. The ranks then agree on one dilation and install the stretch
(F and B last the device's predicted time for those ops; the optimizer's step is not
stretched) and the link shaper (activations, gradients, inputs and targets shaped on the
plan's links and shared media). Returns the time scale (wall seconds per emulated second).
"""

from __future__ import annotations

from typing import Any

import torch

from ...artifact.manifest import PlanFolder
from ..compute_emulation import ComputeStretch
from .config import RunConfig
from .emulation import start_emulation
from .train_config import TrainConfig
from .train_runner import TrainRunner
from .wiring import RankInfo, StageWiring

__all__ = ["emulate_training"]

WARMUP_STEP = -1


def emulate_training(
    config: TrainConfig,
    folder: PlanFolder,
    me: RankInfo,
    wiring: StageWiring,
    runner: TrainRunner,
    module: torch.nn.Module,
    control: Any,
    feed: Any,
) -> float:
    """Warm up, agree on the dilation, install stretch and shaper (see the module doc); 1.0
    without emulation. ``feed(step)``: rank 0 feeds the warm-up step (others: None).
    A collective: every rank calls it."""
    if not config.emulate:
        return 1.0
    buffers = {k: b.detach().clone() for k, b in module.named_buffers()}
    runner.record = True
    if feed is not None:
        feed(WARMUP_STEP)
    runner.run_step(WARMUP_STEP, config.batches[0])
    runner.record = False
    with torch.no_grad():
        for key, buffer in module.named_buffers():
            buffer.copy_(buffers[key])
    for p in module.parameters():
        p.grad = None
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
    return emulation.time_scale
