"""Launching a distributed training run: one process per device on this machine
(``train_local``), each executing its stage's training schedule (``train_rank``).

The launcher checks everything it can before a rank starts: the plan was compiled in training
mode and its last stage returns every output (the loss needs them all), each step's batch
(``data``: a sequence indexed by step, an iterable, or ``data(step)``) flattens to the call
spec and its targets have one row per input row, ``loss_fn`` can be pickled (a module-level
function or an ``nn.Module`` loss; a lambda too when cloudpickle is installed), the optimizer
factory gives one param group of an importable class, and a checkpoint to resume from is
whole (``artifact.checkpoint.check_step``). It then writes the run folder (the config, each
step's batch, the pickled loss), starts the ranks (``supervisor.spawn_ranks``, as inference
runs do) and reads the result.

A rank that dies or fails ends the run within ``timeout_s`` with ``TrainingRankLost`` (a
``DeviceLost``) naming its rank, stage, device and the step it was at, and the checkpoint to
resume from: no step is half applied, since a checkpoint step is used only when every rank's
part of it is complete and verified.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from ...artifact.checkpoint import check_step, latest_complete
from ...artifact.manifest import PlanFolder, read_plan_folder
from ...cost_models.device import Device
from ...errors import DeviceLost, InputError
from ...ir.train_schedule import TRAIN_POLICIES, lower_training
from .launch import free_port, host_device
from .supervisor import spawn_ranks
from .train_config import DATA_FILE, LOSS_FILE, TrainConfig
from .train_rank import run_train_rank
from .train_transport import training_transfers
from .wiring import rank_table
from .worker import die_with_parent, run_worker

__all__ = ["TrainResult", "TrainingRankLost", "train_local", "plan_identity", "main"]


class TrainingRankLost(DeviceLost):
    """A rank of a training run died or failed: ``rank``, ``stage``, ``device`` and ``step``
    (the step it was at) name it; ``checkpoint`` is the newest complete checkpoint step
    folder to resume from (None: none was written)."""

    def __init__(
        self, message: str, *, rank: int, stage: int, device: str, step: int | None,
        checkpoint: Path | None,
    ) -> None:  # fmt: skip
        super().__init__(message, rank=rank, stage=stage, device=device)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    """A distributed training run. ``losses[k]``: the loss of step ``steps[k]`` (the batch's,
    as the un-split model computes it); ``state_dict``: the final weights under the model's
    keys (canonical keys: a tied weight once, under its first key; ``CompiledModel``'s
    ``train_distributed`` gives every key); ``iteration_s[k]``: step ``steps[k]``'s
    iteration time in device seconds (emulated when ``emulated``: wall seconds divided by
    ``time_scale``); ``checkpoints``: the steps checkpointed."""

    losses: list[float]
    steps: list[int]
    state_dict: dict[str, torch.Tensor]
    iteration_s: list[float]
    time_scale: float
    emulated: bool
    wall_s: float
    schedule: str
    checkpoints: list[int] = field(default_factory=list)
    checkpoint_dir: str | None = None
    ranks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def iteration_s_mean(self) -> float:
        """Mean iteration time, the first step (pipeline fill from cold) left out when
        there are more."""
        times = self.iteration_s[1:] or self.iteration_s
        return sum(times) / len(times) if times else float("nan")

    @property
    def iteration_s_median(self) -> float:
        """Median iteration time, the first step left out when there are more (robust to the
        steps a busy host stalls)."""
        times = sorted(self.iteration_s[1:] or self.iteration_s)
        if not times:
            return float("nan")
        mid = len(times) // 2
        return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2


Data = Sequence[Any] | Iterable[Any] | Callable[[int], Any]
LossFn = Callable[[Any, Any], torch.Tensor]


def train_local(
    plan_dir: str | Path,
    data: Data,
    *,
    steps: int,
    loss_fn: LossFn,
    optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    microbatches: int | None = None,
    policy: str = "1f1b",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume_from: str | Path | None = None,
    emulate: bool = False,
    host: Device | str | Path | None = None,
    time_scale: float | None = None,
    compute_reference: str = "measured",
    timeout_s: float = 60.0,
    threads: int = 1,
    port: int = 0,
    device: str = "cpu",
) -> TrainResult:
    """Train the saved plan ``steps`` steps in all, one process per device on 127.0.0.1 (see
    the module doc). ``data``: each step's ``(x, y)``, ``x`` a tensor or a tuple of positional
    inputs; ``optimizer(params)``: the optimizer each rank builds over its stage's parameters.
    ``resume_from``: a checkpoint directory (its newest complete step) or a step folder; the
    run then does the steps after it. ``emulate``: stretch compute and shape transfers to the
    plan's devices and network (needs ``host``, the calibrated host). ``device``: ``"cpu"``,
    or ``"cuda"``: rank ``r`` computes on GPU ``r`` modulo the GPUs there are and its
    gradient groups are NCCL (written, never run yet: no GPU here; tensors between stages
    still cross gloo through the CPU)."""
    folder = read_plan_folder(plan_dir)
    _check_plan(folder, policy)
    table = rank_table(folder.plan)
    identity = plan_identity(folder)
    start, resume_dir = _resume_point(resume_from, table, identity, steps)
    m = microbatches or folder.schedule.microbatches
    batches, spec = _batches(folder, data, range(start, steps), m)
    if checkpoint_every and checkpoint_dir is None:
        raise InputError("checkpoint_every needs checkpoint_dir= (where the ranks write them)")
    with tempfile.TemporaryDirectory(prefix="dora_train_") as run_dir:
        config = TrainConfig(
            plan_dir=str(folder.path.resolve()), run_dir=run_dir, steps=steps,
            optimizer=optimizer_recipe(optimizer), target_spec=spec, microbatches=m,
            batches=[_rows(folder, flat) for flat, _ in batches], policy=policy,
            start_step=start, resume_dir=resume_dir, plan_sha256=identity,
            checkpoint_dir=None if checkpoint_dir is None else str(Path(checkpoint_dir).resolve()),
            checkpoint_every=checkpoint_every, timeout_s=timeout_s, threads=threads,
            device=device, emulate=emulate, host=host_device(host).to_json() if emulate else None,
            time_scale=time_scale, compute_reference=compute_reference,
            ledger_path=os.path.join(run_dir, "ledger"), sys_path=list(sys.path),
        )  # fmt: skip
        Path(run_dir, LOSS_FILE).write_bytes(pickle_loss(loss_fn))
        torch.save(batches, Path(run_dir, DATA_FILE))
        started = time.monotonic()
        try:
            spawn_ranks(
                __name__, config.to_json(), table, run_dir, port or free_port(),
                timeout_s=timeout_s, threads=threads,
            )  # fmt: skip
        except DeviceLost as exc:
            raise _lost(exc, run_dir, config, len(table)) from None
        wall_s = time.monotonic() - started
        raw = torch.load(config.result_path, weights_only=True)
    return _result(raw["ranks"], config, folder, wall_s)


def plan_identity(folder: PlanFolder) -> str:
    """What a checkpoint must match to resume on this plan: the plan and its stage code (not
    the weights, which the checkpoint replaces)."""
    parts = sorted((n, h) for n, h in folder.files.items() if not n.endswith(".safetensors"))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def optimizer_recipe(factory: Callable[[list[torch.nn.Parameter]], Any]) -> dict[str, Any]:
    """The class and keyword arguments of the optimizer ``factory`` builds, probed on one
    parameter here, for every rank to build over its own parameters."""
    if not callable(factory):
        raise InputError(f"optimizer must be a factory, params -> torch.optim.Optimizer; got {factory!r}")
    built = factory([torch.nn.Parameter(torch.zeros(1))])
    cls = type(built)
    if not isinstance(built, torch.optim.Optimizer) or len(built.param_groups) != 1:
        raise InputError(
            "optimizer(params) must return a torch.optim.Optimizer over one param group "
            f"(e.g. lambda ps: torch.optim.SGD(ps, lr=0.01)); got {built!r}"
        )
    name = f"{cls.__module__}:{cls.__qualname__}"
    found: Any = importlib.import_module(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not cls:
        raise InputError(f"the optimizer class {name} cannot be imported by the ranks; define it at module level")
    kwargs = {k: v for k, v in built.param_groups[0].items() if k != "params"}
    try:
        json.dumps(kwargs)
    except TypeError as exc:
        raise InputError(f"the optimizer's settings {kwargs} must be plain numbers: {exc}") from None
    return {"class": name, "kwargs": kwargs}


def pickle_loss(loss_fn: LossFn) -> bytes:
    """``loss_fn`` pickled for the last stage's ranks (cloudpickle when installed, so lambdas
    and functions of ``__main__`` travel too)."""
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable as loss_fn(output, target), got {loss_fn!r}")
    try:
        import cloudpickle

        return bytes(cloudpickle.dumps(loss_fn))
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - said to the user below
        raise InputError(f"loss_fn {loss_fn!r} cannot be pickled for the ranks: {exc}") from None
    try:
        return pickle.dumps(loss_fn)
    except Exception as exc:  # noqa: BLE001 - said to the user below
        raise InputError(
            f"loss_fn {loss_fn!r} cannot be pickled for the ranks ({exc}): pass a module-level "
            "function or an nn.Module loss (a lambda or a local function cannot be pickled)"
        ) from None


# -- checks ---------------------------------------------------------------------------------


def _check_plan(folder: PlanFolder, policy: str) -> None:
    if not folder.training:
        raise InputError(
            f"{folder.path} was compiled in eval mode; compile(..., mode='train') to train it "
            "(dropout and batch norm are captured as in training)"
        )
    if policy not in TRAIN_POLICIES:
        raise InputError(f"policy must be one of {TRAIN_POLICIES}, got {policy!r}")
    *early, last = folder.stages
    returning = [e.index for e in early if e.output_indices]
    if returning or sorted(last.output_indices) != list(range(len(last.output_indices))):
        raise InputError(
            f"stages {returning} return model outputs, but the loss is computed on the last "
            "stage, which needs them all; plan so that the last stage computes every output"
        )
    lower_training(len(folder.stages), training_transfers(folder), 1, policy)


def _resume_point(
    resume_from: str | Path | None, table: Sequence[Any], identity: str, steps: int
) -> tuple[int, str | None]:
    if resume_from is None:
        return 0, None
    root = Path(resume_from)
    found = root if (root / "rank_0.json").is_file() else latest_complete(root, len(table))
    if found is None:
        raise InputError(
            f"{root} holds no complete checkpoint (a step folder with every one of the "
            f"{len(table)} ranks' manifests); train with checkpoint_dir= and checkpoint_every="
        )
    step = check_step(found, [(r.rank, r.stage, r.device) for r in table], identity)
    if step >= steps:
        raise InputError(f"the checkpoint {found} is at step {step}: steps={steps} leaves nothing to run")
    return step, str(found.resolve())


def _batches(
    folder: PlanFolder, data: Data, steps: range, m: int
) -> tuple[list[tuple[list[Any], list[Any]]], str]:
    """Each step's (flat inputs, target leaves), checked, and the targets' pytree spec."""
    out, specs = [], set()
    for step, (x, y) in zip(steps, _step_data(data, steps)):
        args = x if isinstance(x, tuple) else (x,)
        flat = folder.call.flatten(args, {})
        rows = _rows(folder, flat)
        if rows < m:
            raise InputError(f"step {step}'s batch has {rows} rows, fewer than the {m} microbatches")
        leaves, spec = pytree.tree_flatten(y)
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and leaf.dim() and leaf.shape[0] != rows:
                raise InputError(
                    f"step {step}: target has {leaf.shape[0]} rows (shape {tuple(leaf.shape)}) "
                    f"but the inputs have a batch of {rows}; give one target row per input row"
                )
        specs.add(pytree.treespec_dumps(spec))
        out.append((flat, leaves))
    if len(specs) > 1:
        raise InputError("every step's target must have the same structure (pytree)")
    return out, specs.pop() if specs else pytree.treespec_dumps(pytree.tree_flatten(None)[1])


def _step_data(data: Data, steps: range) -> list[Any]:
    if callable(data):
        return [data(s) for s in steps]
    if isinstance(data, Sequence):
        if not data:
            raise InputError("data is empty; give at least one (x, y) batch")
        return [data[s % len(data)] for s in steps]
    iterator = iter(data)
    taken = [next(iterator, None) for _ in range(steps.stop)][steps.start :]
    if any(t is None for t in taken):
        raise InputError(f"data ran out before step {steps.stop}; give a sequence (cycled) or more batches")
    return taken


def _rows(folder: PlanFolder, flat: Sequence[Any]) -> int:
    rows = folder.call.batch_size(flat)
    if rows is None:
        raise InputError("training needs inputs with a batch dim to cut into microbatches")
    return rows


# -- results --------------------------------------------------------------------------------


def _lost(exc: DeviceLost, run_dir: str, config: TrainConfig, world: int) -> TrainingRankLost:
    mark = Path(run_dir, f"step_{exc.rank}")
    text = mark.read_text().strip() if mark.is_file() else ""
    step = int(text) if text else None
    last = latest_complete(config.checkpoint_dir, world) if config.checkpoint_dir else None
    where = f"at training step {step}" if step is not None else "before its first step"
    resume = (
        f"resume with resume_from={config.checkpoint_dir!r} (newest complete checkpoint: "
        f"{last.name})" if last is not None else "no complete checkpoint was written"
    )  # fmt: skip
    return TrainingRankLost(
        f"training stopped {where}: {exc}; {resume}", rank=exc.rank, stage=exc.stage,
        device=exc.device, step=step, checkpoint=last,
    )  # fmt: skip


def _result(
    records: list[dict[str, Any]], config: TrainConfig, folder: PlanFolder, wall_s: float
) -> TrainResult:
    last = len(folder.stages) - 1
    count = config.steps - config.start_step
    losses = [sum(r["losses"][k] for r in records if r["stage"] == last) for k in range(count)]
    state: dict[str, torch.Tensor] = {}
    for record in records:
        for key, tensor in record.get("state", {}).items():
            state.setdefault(key, tensor)
    scale = float(records[0]["time_scale"])
    iteration = []
    for k in range(count):
        end = max(r["ends"][k] for r in records)
        before = max(r["ends"][k - 1] for r in records) if k else min(r["starts"][0] for r in records)
        iteration.append((end - before) / scale)
    text = "\n".join(f"stage {r['stage']}: {r['schedule']}" for r in records if r["rank"] == min(
        q["rank"] for q in records if q["stage"] == r["stage"]))  # fmt: skip
    return TrainResult(
        losses=losses, steps=list(range(config.start_step, config.steps)), state_dict=state,
        iteration_s=iteration, time_scale=scale, emulated=config.emulate, wall_s=wall_s,
        schedule=f"train schedule policy={config.policy} microbatches={config.microbatches}\n{text}",
        checkpoints=sorted({s for r in records for s in r["checkpoints"]}),
        checkpoint_dir=config.checkpoint_dir,
        ranks=[{k: v for k, v in r.items() if k != "state"} for r in records],
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--worker":
        print("usage: python -m dora_fx.runtime.distributed.train_launch --worker CONFIG_JSON")
        return 2
    die_with_parent()
    config = TrainConfig.from_json(json.loads(Path(args[1]).read_text()))
    sys.path[:0] = [p for p in config.sys_path or [] if p not in sys.path]  # the caller's modules
    return run_worker(lambda rank, world: run_train_rank(config, rank, world), config.result_path)


if __name__ == "__main__":
    sys.exit(main())
