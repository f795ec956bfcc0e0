"""One rank of a torch.distributed.pipelining peer training run: ``python -m
dora_fx.peers.pipelining_train_rank --worker CONFIG_JSON``, started by
``run_pipelining_training`` through ``spawn_ranks``.

What a hand-written pipelining user does on each rank: ``pipeline(model, mb_args,
split_spec)``, ``build_stage``, ``Schedule1F1B(stage, n_microbatches, loss_fn=loss_fn)`` (or
``ScheduleGPipe``), then per step ``step(x)`` on the first stage, ``step(target=y,
losses=losses)`` on the last, ``step()`` in between, and the rank's own ``SGD`` step over its
stage's parameters. The warm-up steps (not emulated, not measured) are undone afterwards
(weights and optimizer state restored), so the measured steps start from the model's weights.
Every rank stamps the end of each step (``time.monotonic``, one clock on this host); rank 0
gathers the stamps and figures, the last stage's losses, and writes the result.
"""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..runtime.distributed.config import STARTUP_TIMEOUT_S
from .pipelining_config import PeerTrainConfig
from .pipelining_rank import worker_main, write_progress
from .pipelining_train_emulation import _TrainEmulation, start_train_emulation

__all__ = ["main"]


def _run_rank(config: PeerTrainConfig, rank: int, world_size: int) -> None:
    from torch.distributed.pipelining import (
        Schedule1F1B,
        ScheduleGPipe,
        SplitPoint,
        pipeline,
        schedules,
    )

    torch.set_num_threads(config.threads)
    if world_size != len(config.devices):
        raise ValueError(
            f"the peer run has {len(config.devices)} stages but {world_size} ranks were started"
        )
    startup = timedelta(seconds=max(config.timeout_s, STARTUP_TIMEOUT_S))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=startup)
    control = dist.new_group(backend="gloo", timeout=startup)
    inputs = torch.load(config.inputs_path, weights_only=False)
    model = inputs["model"].train()
    spec = {name: SplitPoint.BEGINNING for name in config.split_points}
    pipe = pipeline(model, mb_args=inputs["mb_args"], split_spec=spec)
    if pipe.num_stages != world_size:
        raise ValueError(
            f"split at {config.split_points} gave {pipe.num_stages} stages, expected {world_size}"
        )
    stage = pipe.build_stage(rank, torch.device("cpu"))
    del pipe, model, inputs["model"]
    kind = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[config.schedule]
    schedule = kind(stage, n_microbatches=config.microbatches, loss_fn=inputs["loss_fn"])
    optimizer = torch.optim.SGD(stage.submod.parameters(), lr=config.lr, momentum=config.momentum)
    emulation = _TrainEmulation(rank, config.devices, config.timeout_s)
    segments = emulation.segments
    stage.submod.forward = segments["forward"].wrap(stage.submod.forward)  # type: ignore[method-assign]
    schedule._compute_loss = segments["loss"].wrap(schedule._compute_loss)  # type: ignore[method-assign]
    stage.backward_one_chunk = segments["backward"].wrap(stage.backward_one_chunk)  # type: ignore[method-assign]
    step_optimizer = segments["optimizer"].wrap(optimizer.step)
    schedules._batch_p2p = emulation.batch_p2p(schedules._batch_p2p)  # type: ignore[attr-defined]
    batches = inputs["batches"]
    last = world_size - 1

    def train(batch: tuple[tuple[Any, ...], Any]) -> list[float]:
        args, target = batch
        losses: list[torch.Tensor] = []
        if rank == 0 and rank == last:
            schedule.step(*args, target=target, losses=losses)
        elif rank == 0:
            schedule.step(*args)
        elif rank == last:
            schedule.step(target=target, losses=losses)
        else:
            schedule.step()
        step_optimizer()
        optimizer.zero_grad()
        return [float(loss.detach()) for loss in losses]

    # Phase 1: warm up (shape inference, op counting, CPU-time reference), then undo it.
    weights = copy.deepcopy(stage.submod.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    cpu_after_first = time.process_time()
    for k in range(config.warmup):
        if k == 1:
            cpu_after_first = time.process_time()  # the first step is slower (metadata, ops)
        train(batches[k % len(batches)])
    cpu_step_s = (time.process_time() - cpu_after_first) / max(config.warmup - 1, 1)
    stage.submod.load_state_dict(weights)
    optimizer.load_state_dict(optimizer_state)
    dist.barrier(group=control)
    scale = start_train_emulation(config, emulation, control, cpu_step_s)
    # Phase 2: the measured steps, back to back as a training loop runs them.
    dist.barrier(group=control)
    start = time.monotonic()
    ends: list[float] = []
    losses: list[list[float]] = []
    for k, batch in enumerate(batches):
        losses.append(train(batch))
        ends.append(time.monotonic())
        if rank == 0:
            write_progress(config, k + 1, len(batches))
    emulation.finish()
    figures = {
        "rank": rank,
        "stage": rank,
        "device": config.devices[rank],
        "start": start,
        "ends": ends,
        "losses": losses if rank == last else [],
        **emulation.metrics(scale, config.microbatches),
    }
    gathered: list[Any] = [None] * world_size if rank == 0 else []
    dist.gather_object(figures, gathered if rank == 0 else None, dst=0, group=control)
    if rank == 0:
        torch.save({"time_scale": scale, "ranks": gathered}, config.result_path)
    dist.barrier(group=control)


def main() -> int:
    return worker_main("dora_fx.peers.pipelining_train_rank", PeerTrainConfig, _run_rank)


if __name__ == "__main__":
    raise SystemExit(main())
