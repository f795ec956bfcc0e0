"""The user-facing entry points: ``compile``, ``CompiledModel``, ``load``."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .adapter import Adapter
from .artifact.folder import save_folder
from .compiler.pipeline import run_passes
from .compiler.state import CompileState
from .cost_models.cluster import Cluster, as_cluster
from .cost_models.device import Device
from .cost_models.train_costs import OPTIMIZERS
from .errors import InputError, PlanError, QoEError
from .explain import adapter_for, explain_state
from .ir.plan import Plan
from .qoe import QoE
from .runtime.loaded import LoadedModel, load
from .runtime.local import LocalPipeline
from .runtime.train_memory import StageMemory, check_fits, training_memory
from .runtime.train_step import LossFn, train_step
from .runtime.weights import StageWeights
from .sim import SimConfig, SimResult, simulate
from .sim.scheduled import simulate_schedule

if TYPE_CHECKING:
    from .runtime.distributed.launch import DistributedResult
    from .runtime.distributed.train_launch import TrainResult

__all__ = ["compile", "CompiledModel", "load", "LoadedModel"]


def compile(
    model: torch.nn.Module,
    devices: Cluster | Sequence[Device],
    qoe: QoE | None = None,
    *,
    example_inputs: Sequence[Any],
    example_kwargs: dict[str, Any] | None = None,
    num_stages: int | None = None,
    seq_dim: int | None = None,
    max_blocks: int = 100,
    plan: Plan | str | None = None,
    microbatches: int | None = None,
    mode: str | None = None,
    loss_fn: LossFn | None = None,
    share_weights: bool = False,
    optimizer: str = "adamw",
) -> CompiledModel:
    """Partition ``model`` across ``devices`` to meet ``qoe``.

    ``devices``: a Cluster (devices plus network) or a list of Device (a default network is then
    assumed, and explain() says so). ``example_inputs``: a tuple of positional inputs (its batch
    size should be >= 2 so the batch stays symbolic). ``num_stages``: pipeline stages (default:
    one per device). ``seq_dim``: make this input dim symbolic too (e.g. 1 for token ids).
    ``plan``: use this plan (a Plan or its text form) instead of planning; it must cover the
    model's blocks (see ``explain()`` for the count). ``microbatches``: split each request into
    this many microbatches (default: the count the schedule pass finds fastest by simulation).
    ``mode``: ``"train"`` or ``"eval"`` captures the model in that mode (default: the mode it
    is in); ``loss_fn(output, target)``: the loss ``train_step`` applies per microbatch.
    ``share_weights``: the stages use the model's own parameters and buffers instead of
    copies (what an optimizer steps, and batch norm updates, is then the model's).
    ``optimizer``: what a training plan budgets the optimizer's state and step for
    (``"adamw"``, ``"adam"``, ``"sgd"``, ``"sgd-momentum"``); plan for the one you train with.
    """
    training = _training_mode(model, mode, loss_fn)
    if optimizer not in OPTIMIZERS:
        raise InputError(
            f"optimizer={optimizer!r} is not one the planner knows; pick one of "
            f"{sorted(OPTIMIZERS)} (the closest in state and step cost to yours)"
        )
    cluster, assumed_network = as_cluster(devices)
    if qoe is None:
        qoe = QoE()
    elif not isinstance(qoe, QoE):
        raise QoEError(f"qoe must be a dora_fx.QoE, got {type(qoe).__name__}")
    state = CompileState(
        model=model,
        example_inputs=example_inputs,  # type: ignore[arg-type]  # checked by capture
        example_kwargs=dict(example_kwargs or {}),
        cluster=cluster,
        qoe=qoe,
        num_stages=num_stages,
        seq_dim=seq_dim,
        max_blocks=max_blocks,
        given_plan=Plan.from_text(plan) if isinstance(plan, str) else plan,
        microbatches=microbatches,
        for_training=mode == "train",
        optimizer=optimizer,
    )
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):  # anything else: capture says what it needs
        model.train(training)
    try:
        run_passes(state)
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    notes = []
    if assumed_network:
        notes.append(
            f"devices given as a list: assumed the default network ({cluster.network}); "
            "pass a dora_fx.Cluster to describe the real one"
        )
        warnings.warn(notes[-1], stacklevel=2)
    if training and state.schedule is not None:
        notes += _batch_norm_note(model, state.schedule.microbatches)
    compiled = CompiledModel(state, notes, loss_fn, share_weights)
    if training:
        compiled.check_training_memory()
    return compiled


def _batch_norm_note(model: torch.nn.Module, microbatches: int) -> list[str]:
    """Batch norm in training mode normalizes each microbatch by its own statistics."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or microbatches == 1:
        return []
    note = (
        f"the model has {len(norms)} batch norm layer(s) and the schedule cuts each batch into "
        f"{microbatches} microbatches: in training mode each microbatch is normalized by its own "
        "statistics, so losses, gradients and running statistics differ from the un-split "
        "model's; compile with microbatches=1 for the same results"
    )
    warnings.warn(note, stacklevel=3)
    return [note]


def _training_mode(model: torch.nn.Module, mode: str | None, loss_fn: LossFn | None) -> bool:
    """The mode the model is captured in: ``mode``'s, or the model's own."""
    if mode not in (None, "train", "eval"):
        raise InputError(f"mode must be 'train', 'eval' or None (the model's own), got {mode!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise InputError(f"loss_fn must be callable as loss_fn(output, target), got {loss_fn!r}")
    if mode is None:
        return bool(getattr(model, "training", False))
    training = mode == "train"
    if training != getattr(model, "training", False):
        warnings.warn(
            f"the model is in {'training' if model.training else 'eval'} mode; mode={mode!r} "
            f"captures it in {mode} mode (dropout and batch norm as in {mode}) and leaves the "
            f"model as it was; call model.{mode}() first to silence this",
            stacklevel=3,
        )
    return training


class CompiledModel(LocalPipeline):
    """The partitioned model. Call it like the original (in-process run of every stage)."""

    def __init__(
        self,
        state: CompileState,
        notes: list[str],
        loss_fn: LossFn | None = None,
        share_weights: bool = False,
    ) -> None:
        assert state.captured is not None and state.plan is not None
        assert state.call is not None and state.schedule is not None
        assert state.cluster is not None
        super().__init__(state.stages, state.call, state.schedule, state.captured.training)
        self.state = state
        self.plan = state.plan
        self.cluster: Cluster = state.cluster
        self.qoe = state.qoe
        self.notes = notes + state.captured.notes
        self.loss_fn = loss_fn
        self.memory: list[StageMemory] = []  # training memory per device (train mode)
        self.optimizer = state.optimizer
        self.memory_schedule = "1f1b"  # the policy the training memory was counted under
        model_state = state.model.state_dict(keep_vars=True)
        attrs = state.captured.attr_sources
        self.weights = StageWeights(state.stages, attrs, model_state, share_weights)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The stages' parameters, one per model parameter (tied weights once)."""
        return (p for _, p in self.weights.named_parameters())

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return self.weights.named_parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stages' weights under the model's ``state_dict`` keys."""
        return self.weights.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.weights.load_state_dict(state)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train_step(self, *args: Any, target: Any, **kwargs: Any) -> torch.Tensor:
        """Forward and backward of one batch over the schedule's microbatches; gradients
        accumulate in ``parameters()`` (step the optimizer after). Returns the batch's loss
        (``runtime.train_step``)."""
        if self.loss_fn is None:
            raise InputError(
                "train_step needs the loss: compile(..., mode='train', loss_fn=...); or call "
                "the model and backward your own loss"
            )
        if not self.training:
            raise InputError(
                "train_step on a model compiled in eval mode: compile(..., mode='train') "
                "captures dropout and batch norm as in training"
            )
        return train_step(self, args, kwargs, target, self.loss_fn)

    def explain(self, batch: int | None = None) -> str:
        text = explain_state(self.state, self.notes, batch)
        if self.memory:
            policy = "GPipe" if self.memory_schedule == "gpipe" else "1F1B"
            lines = [f"training memory per device ({policy}, {self.optimizer}, batch {self.qoe.batch}):"]
            text += "\n" + "\n".join(lines + ["  " + m.describe() for m in self.memory])
        return text

    def check_training_memory(self, optimizer: str | None = None) -> list[StageMemory]:
        """Each device's training memory (weights, gradients, ``optimizer``'s state (default:
        the one compiled for) and the activations in flight under the planned schedule policy,
        1F1B when the stages were pinned; ``runtime.train_memory``), kept for explain();
        ``InfeasibleQoEError`` names a device it does not fit."""
        optimizer = optimizer or self.state.optimizer
        schedule = self.state.training.schedule if self.state.training else "1f1b"
        flat = self.call.flatten(tuple(self.state.example_inputs), self.state.example_kwargs)
        self.memory = training_memory(self, flat, self.cluster, self.qoe.batch, optimizer, schedule)
        self.optimizer, self.memory_schedule = optimizer, schedule
        check_fits(self.memory, optimizer)
        return self.memory

    def adapter(self, anticipate: bool = True) -> Adapter:
        """The runtime adapter over this model's plan set: ``decide(conditions)`` composes the
        plans for the current load, bandwidth and devices (see ``dora_fx.adapter``).
        ``anticipate``: add the planner's plans for slower links, twice the load and each
        device gone (``adapter.plan_set``; a few more solves, once)."""
        if self.state.plan_set is None or self.state.problem is None:
            raise PlanError(
                "this model was compiled with a fixed num_stages or a given plan, so it has no "
                "plan set to compose; compile without them to get one"
            )
        return adapter_for(self.state.plan_set.plans, self.state.problem, anticipate)

    def simulate(self, config: SimConfig | None = None, **options: Any) -> SimResult:
        """Simulate the chosen plan on the cluster (see ``dora_fx.sim.SimConfig`` for options:
        requests, request_rate_rps, microbatches, concurrency, ...). The plan runs its compiled
        schedule (``state.schedule``): ``microbatches=N`` simulates that schedule relowered
        for N (1 included), as ``run_distributed(microbatches=...)`` runs it; not given, the
        compiled count."""
        assert self.state.problem is not None
        config = config or SimConfig(**options)
        if self.state.schedule is not None:
            return simulate_schedule(self.state.schedule, self.plan, self.state.problem, config)
        return simulate(self.plan, self.state.problem, config)

    def run_distributed(
        self, requests: Sequence[Any], *, path: str | Path | None = None, **options: Any
    ) -> DistributedResult:
        """Save the plan and run it for real, one process per device on this machine
        (torch.distributed, gloo), emulating each device and link by default. ``requests``:
        tuples of inputs; ``options`` go to ``dora_fx.runtime.distributed.launch.run_local``."""
        from .runtime.distributed.launch import run_local

        if path is not None:
            return run_local(self.save(path), requests, **options)
        with tempfile.TemporaryDirectory(prefix="dora_plan_") as folder:
            return run_local(self.save(folder), requests, **options)

    def train_distributed(
        self,
        data: Any,
        *,
        steps: int = 20,
        optimizer: Any = None,
        loss_fn: LossFn | None = None,
        path: str | Path | None = None,
        **options: Any,
    ) -> TrainResult:
        """Train for real, one process per device on this machine (torch.distributed, gloo):
        each rank runs its stage's training schedule (default: the GPipe or 1F1B policy the
        planner chose, ``policy=`` to override) of the plan's microbatches, data-parallel replicas and tied weights have their gradients summed by
        all-reduce, and each rank steps its own ``optimizer(params)`` (default SGD, lr 0.01).
        ``data``: each step's ``(x, y)`` (a sequence, cycled; an iterable; or ``data(step)``).
        ``loss_fn``: default the compile's. ``options`` go to
        ``dora_fx.runtime.distributed.train_launch.train_local`` (``checkpoint_dir``,
        ``checkpoint_every``, ``resume_from``, ``microbatches``, ``emulate``, ``host``, ...).
        The compiled model's own weights are left as they are: the result's ``state_dict``
        holds the trained ones under every model key (``load_state_dict`` takes it)."""
        from .runtime.distributed.train_launch import train_local

        loss = loss_fn or self.loss_fn
        if loss is None:
            raise InputError("train_distributed needs the loss: loss_fn=, or compile(..., loss_fn=)")
        factory = optimizer or _default_optimizer
        self._check_optimizer_state(factory)
        planned = self.state.training
        if planned is not None:  # the schedule the planner chose, unless the caller says
            options.setdefault("policy", planned.schedule)
        with tempfile.TemporaryDirectory(prefix="dora_plan_") as folder:
            plan_dir = self.save(path or folder)
            result = train_local(plan_dir, data, steps=steps, loss_fn=loss, optimizer=factory, **options)
        result.state_dict = self.weights.expand(result.state_dict)
        return result

    def _check_optimizer_state(self, factory: Any) -> None:
        """Warn when the optimizer a run steps keeps more state than the plan budgeted."""
        from .runtime.distributed.train_emulation import optimizer_kind
        from .runtime.distributed.train_launch import optimizer_recipe

        recipe = optimizer_recipe(factory)
        kind, planned = optimizer_kind(recipe), self.state.optimizer
        if OPTIMIZERS[kind] > OPTIMIZERS[planned]:
            name = recipe["class"].rpartition(":")[2]
            warnings.warn(
                f"this run steps {name}, whose state (taken as {kind}'s, {OPTIMIZERS[kind]:g}x "
                f"the weights) the plan did not budget: it was planned for {planned}; "
                f"compile(..., optimizer={kind!r}) to plan memory and step time for it",
                stacklevel=3,
            )

    def save(self, path: str | Path) -> Path:
        """Write the plan folder (``stage_K.py``, weights, ``plan.txt``, ``plan.json``) that
        ``dora_fx.load`` and the distributed runtime read."""
        return save_folder(
            path,
            plan=self.plan,
            stages=self.stages,
            call=self.call,
            schedule=self.schedule,
            training=self.training,
            extra={
                "cluster": self.cluster.to_json(),
                "qoe": self.qoe.to_json(),
                "weight_keys": [self.weights.stage_keys(s.module) for s in self.stages],
            },
        )


def _default_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01)


# re-exported so ``dora_fx.load`` sits beside ``dora_fx.compile``
load = load
