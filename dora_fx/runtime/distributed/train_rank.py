"""Distributed training, rank: what one rank process does from start to end of a training run.

``run_train_rank`` reads the plan folder once, loads its own stage (its files checked) in
training mode, ties the stage's attributes that are one model tensor to one parameter, builds
its optimizer over the stage's parameters (the class and keyword arguments the launcher probed
from the user's factory), loads the resumed step's weights and optimizer state when asked,
joins the process group and creates, in the same order on every rank, the control group and the
gradient groups (``train_reduce``). Each step it executes its stage's training schedule
(``ir.train_schedule``, lowered from the plan folder's transfers; ``train_runner``), steps its
optimizer and, every ``checkpoint_every`` steps, writes its checkpoint (``artifact.checkpoint``).
Rank 0 feeds the pipeline: it cuts each step's batch into the microbatches (the one batch split),
sends every stage the inputs it uses and the last stage the targets. At the end rank 0 gathers
every rank's losses, step times and weights into the result file.

``DORA_TRAIN_KILL=RANK:STEP`` makes that rank kill itself (SIGKILL) as the step starts: the
failure path's test hook.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

from ...artifact.checkpoint import RankCheckpoint, read_rank, write_rank
from ...artifact.folder import load_stage_module
from ...artifact.manifest import PlanFolder, read_plan_folder
from ...errors import PlanFolderError
from ...ir.batch_split import split_sizes
from ...ir.train_schedule import lower_training
from ..data_parallel import slice_along
from ..segments import SegmentProgram
from .config import STARTUP_TIMEOUT_S
from .train_config import DATA_FILE, KILL_ENV, LOSS_FILE, TrainConfig, build_optimizer
from .train_emulation import StepEmulation, emulate_training
from .train_reduce import GradientGroups
from .train_runner import TrainRunner
from .train_transport import TrainTransport, TrainWiring, grad_tags, training_transfers

__all__ = ["run_train_rank", "stage_keys"]


def run_train_rank(config: TrainConfig, rank: int, world_size: int) -> None:
    torch.set_num_threads(config.threads)
    folder = read_plan_folder(config.plan_dir)
    wiring = TrainWiring.from_folder(folder)
    assert isinstance(wiring, TrainWiring)
    me = wiring.table[rank]
    device = _device(config.device, rank)
    module = load_stage_module(folder, me.stage).module.to(device).train(True)
    keys = stage_keys(folder)
    params = _tie(module, keys[me.stage])
    optimizer = build_optimizer(config.optimizer, [params[k] for k in sorted(params)])
    if config.resume_dir:
        _resume(Path(config.resume_dir), rank, module, keys[me.stage], optimizer)
    startup = timedelta(seconds=max(config.timeout_s, STARTUP_TIMEOUT_S))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=startup)
    control = dist.new_group(backend="gloo", timeout=startup)
    reduction = GradientGroups(rank, wiring, keys, params, startup, device)
    transfers = training_transfers(folder)
    schedule = lower_training(wiring.num_stages, transfers, config.microbatches, config.policy)
    transport = TrainTransport(me, wiring, config.timeout_s, device, config.microbatches)
    last = None
    if me.stage == wiring.last_stage:
        loss_fn = pickle.loads(Path(config.run_dir, LOSS_FILE).read_bytes())  # the caller's own
        last = (loss_fn, folder.call, pytree.treespec_loads(config.target_spec))
    runner = TrainRunner(
        me.stage, schedule.stages[me.stage], config.microbatches, SegmentProgram(module),
        transport, reduction, grad_tags(transfers, me.stage), last,
    )  # fmt: skip
    data = torch.load(Path(config.run_dir, DATA_FILE), weights_only=True) if rank == 0 else []
    dims = folder.call.batch_dims
    feed = (lambda step: _feed(runner, step, config.microbatches, data[0], dims)) if rank == 0 else None
    emulation = emulate_training(config, folder, me, wiring, runner, module, control, feed)
    record = _train(
        config, rank, world_size, me, module, keys, optimizer, runner, data, dims, emulation
    )
    transport.close()
    record.update(time_scale=emulation.time_scale, schedule=schedule.stage_text(me.stage))
    if me.slot == 0:  # replicas hold the same weights
        record["state"] = _weights(module, keys[me.stage])
    records: list[Any] = [None] * world_size if rank == 0 else []
    dist.gather_object(record, records if rank == 0 else None, dst=0, group=control)
    if rank == 0:
        torch.save({"ranks": records}, config.result_path)
    dist.barrier(group=control)


def _train(
    config: TrainConfig, rank: int, world: int, me: Any, module: torch.nn.Module,
    keys: list[dict[str, str]], optimizer: torch.optim.Optimizer, runner: TrainRunner,
    data: list[Any], dims: list[int | None], emulation: StepEmulation,
) -> dict[str, Any]:  # fmt: skip
    losses, starts, ends, checkpoints = [], [], [], []
    kill = os.environ.get(KILL_ENV, "")
    mark = StepMark(Path(config.run_dir, f"step_{rank}"))
    for index, step in enumerate(range(config.start_step, config.steps)):
        mark.write(step)
        if kill == f"{rank}:{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        starts.append(time.monotonic())
        optimizer.zero_grad(set_to_none=True)
        if rank == 0:
            _feed(runner, step, config.microbatches, data[index], dims)
        losses.append(runner.run_step(step, config.batches[index]))
        stepped = time.monotonic()
        emulation.step_optimizer(optimizer)
        ends.append(time.monotonic())
        runner.note(step, "OPTIMIZER", stepped, ends[-1])
        emulation.after_step(runner)
        done = step + 1
        every = config.checkpoint_every
        if config.checkpoint_dir and every and (done % every == 0 or done == config.steps):
            info = RankCheckpoint(done, rank, me.stage, me.device, world, config.plan_sha256, {})
            state = _weights(module, keys[me.stage])
            write_rank(config.checkpoint_dir, info, state, optimizer.state_dict())
            checkpoints.append(done)
    mark.close()
    return {
        "rank": rank, "stage": me.stage, "device": me.device, "losses": losses,
        "starts": starts, "ends": ends, "checkpoints": checkpoints,
        "compute_cpu_s": runner.compute_cpu_s, "trace": runner.trace,
    }  # fmt: skip


class StepMark:
    """The step a rank is on, for the launcher to name when the rank dies: one file kept open
    and overwritten in place (a file written per step cost 0.2 ms of a phone's 3 ms step)."""

    WIDTH = 20

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, step: int) -> None:
        os.pwrite(self._fd, str(step).rjust(self.WIDTH).encode(), 0)

    def close(self) -> None:
        os.close(self._fd)


def _device(name: str, rank: int) -> torch.device:
    """``cuda``: GPU ``rank`` modulo the GPUs there are (NCCL needs one GPU per rank of a
    group); anything else as given."""
    if name == "cuda":
        return torch.device("cuda", rank % max(torch.cuda.device_count(), 1))
    return torch.device(name)


def _feed(
    runner: TrainRunner, step: int, m: int, batch: tuple[list[Any], list[Any]],
    dims: list[int | None],
) -> None:  # fmt: skip
    """Rank 0: every microbatch's inputs to the stages using them, targets to the last stage."""
    flat, leaves = batch
    transport = runner.transport
    rows = _rows(flat, dims)
    start = 0
    for mb, size in enumerate(split_sizes(rows, [1.0] * m)):
        item = step * m + mb
        transport.scatter_inputs(item, [slice_along(x, d, start, size) for x, d in zip(flat, dims)])
        transport.scatter_targets(item, [_target_rows(t, rows, start, size) for t in leaves])
        start += size


def _rows(flat: list[Any], dims: list[int | None]) -> int:
    for value, dim in zip(flat, dims):
        if dim is not None and isinstance(value, torch.Tensor):
            return int(value.shape[dim])
    raise PlanFolderError("training needs an input with a batch dim to cut into microbatches")


def _target_rows(leaf: Any, rows: int, start: int, size: int) -> Any:
    if isinstance(leaf, torch.Tensor) and leaf.dim() and leaf.shape[0] == rows:
        return leaf.narrow(0, start, size)
    return leaf


def stage_keys(folder: PlanFolder) -> list[dict[str, str]]:
    """Per stage, its weight attributes -> the model's state_dict keys (plan.json)."""
    keys = folder.raw.get("weight_keys")
    if not isinstance(keys, list) or len(keys) != len(folder.stages):
        raise PlanFolderError(
            f"{folder.path} does not say which model weight each stage attribute is "
            "(weight_keys): it was saved by an older dora_fx; compile and save it again"
        )
    return [dict(k) for k in keys]


def _tie(module: torch.nn.Module, keys: dict[str, str]) -> dict[str, torch.nn.Parameter]:
    """Point the stage's attributes that are one model tensor at one parameter (so the
    optimizer steps it once and autograd sums its uses); returns the parameters by key."""
    params: dict[str, torch.nn.Parameter] = {}
    for attr, key in keys.items():
        value = getattr(module, attr)
        if not isinstance(value, torch.nn.Parameter):
            continue
        if key in params:
            setattr(module, attr, params[key])
        else:
            params[key] = value
    return params


def _weights(module: torch.nn.Module, keys: dict[str, str]) -> dict[str, torch.Tensor]:
    """The stage's weights and buffers under the model's keys (each once)."""
    out: dict[str, torch.Tensor] = {}
    for attr, key in keys.items():
        out.setdefault(key, getattr(module, attr).detach().to("cpu").clone())
    return out


def _resume(
    folder: Path, rank: int, module: torch.nn.Module, keys: dict[str, str],
    optimizer: torch.optim.Optimizer,
) -> None:  # fmt: skip
    weights, state = read_rank(folder, rank)
    missing = sorted(set(keys.values()) - set(weights))
    if missing:
        raise PlanFolderError(f"the checkpoint in {folder} lacks {missing[:3]} of rank {rank}")
    with torch.no_grad():
        for attr, key in keys.items():
            getattr(module, attr).copy_(weights[key])
    optimizer.load_state_dict(state)
