"""The peer, trained for real: a model split by ``torch.distributed.pipelining`` and trained with
its ``Schedule1F1B`` (or ``ScheduleGPipe``), one process per device, emulated as Dora's runtime
is (``peers.pipelining_train_emulation``).

What a hand-written pipelining user does (``peers.pipelining_train_rank``): evenly spaced
``SplitPoint``s (``even_split_points``), ``Schedule1F1B(stage, n_microbatches,
loss_fn=loss_fn)``, ``step(x)`` on the first stage, ``step(target=y, losses=losses)`` on the
last, ``step()`` in between, and each rank's ``SGD`` step over its own stage. The schedule
averages the microbatches' gradients (``scale_grads=True``), so with a loss that averages over
its batch the step equals plain single-process training on the whole batch (the test checks
the losses to rtol 1e-4).

Schedule1F1B on gloo, torch 2.13.0 (CPU), checked here: it does not hang. Unemulated (torch's
own ``_batch_p2p``, whose mixed send+receive batches ``fwd_send_bwd_recv`` and
``bwd_send_fwd_recv`` go through ``dist.batch_isend_irecv``) it trained 3 steps on 2 ranks x 2
microbatches, 3 ranks x 4 and 4 ranks x 8 and gave plain training's losses; emulated, sends go
through the link shaper instead. The reported hang (batch_isend_irecv on non-NCCL backends) is
therefore not reproduced here; should a run still hang, the whole run is ended at ``timeout_s``
and ``PeerScheduleHung`` says so, and ``peer_training_throughput`` falls back to GPipe.

Tied weights are not one parameter to the peer: ``pipeline`` copies a weight two stages use
(GPT-2's ``wte`` and ``lm_head``) into both, and each stage trains its own copy; its losses are
those of plain training of the untied model (the first step's equal the tied model's).

``run_pipelining_training`` returns per-step losses and, in emulated device seconds, each
step's iteration time (from the end of the step before, or the measured steps' start, to the
last rank's end of its optimizer step) and the samples per second of the measured steps.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..cost_models.cluster import Cluster
from ..errors import RankFailedError
from ..runtime.distributed.launch import free_port
from ..runtime.distributed.supervisor import kill_all, spawn_ranks
from .pipelining import PeerRank, even_split_points
from .pipelining_config import PeerTrainConfig

__all__ = [
    "PeerScheduleHung",
    "PeerTrainingResult",
    "logits_cross_entropy",
    "peer_training_throughput",
    "run_pipelining_training",
    "synthetic_batches",
]

SCHEDULES = {"1f1b": "Schedule1F1B", "gpipe": "ScheduleGPipe"}
Batch = tuple[tuple[Any, ...], Any]  # (positional inputs, target)


class PeerScheduleHung(RankFailedError):
    """The peer's schedule did not finish within the run's timeout (a hang, or a rank's
    collective timed out): every rank was stopped. ``schedule`` names it."""

    def __init__(self, message: str, *, schedule: str) -> None:
        super().__init__(message)
        self.schedule = schedule


@dataclass
class PeerTrainingResult:
    schedule: str  # "1f1b" or "gpipe"
    losses: list[float]  # per step: the mean of its microbatches' losses
    microbatch_losses: list[list[float]]
    iteration_s: list[float]  # per step, emulated device seconds (wall seconds unemulated)
    samples_per_s: float  # over the measured steps
    batch: int
    time_scale: float
    ranks: list[dict[str, Any]]
    wall_s: float
    emulated: bool
    notes: list[str] = field(default_factory=list)


def logits_cross_entropy(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a model's logits (a tensor, or ``output["logits"]`` / ``.logits`` /
    the first tensor of a pytree) against class ids ``target`` of the logits' leading shape;
    a module-level function, so it travels to the ranks (lambdas do not pickle)."""
    logits = output
    if not isinstance(output, torch.Tensor):
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, dict):
            logits = output.get("logits")
        if logits is None:
            logits = next(t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor))
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def synthetic_batches(
    example: tuple[Any, ...], target: torch.Tensor, steps: int, seed: int = 0
) -> list[Batch]:
    """``steps`` batches shaped like ``example`` and ``target``, drawn from ``seed``: floating
    tensors normal, integer tensors uniform over ``0..max`` of the example's values."""
    generator = torch.Generator().manual_seed(seed)

    def like(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return torch.randn(value.shape, generator=generator, dtype=value.dtype)
        high = int(value.max()) + 1 if value.numel() else 1
        return torch.randint(0, max(high, 1), value.shape, generator=generator, dtype=value.dtype)

    return [(tuple(like(v) for v in example), like(target)) for _ in range(steps)]


def run_pipelining_training(
    model: nn.Module,
    batches: Sequence[Batch],
    devices: Sequence[str],
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *,
    cluster: Cluster | None = None,
    microbatches: int = 2,
    schedule: str = "1f1b",
    lr: float = 0.01,
    momentum: float = 0.0,
    split_points: Sequence[str] | None = None,
    warmup: int = 2,
    emulate: bool = True,
    time_scale: float | None = None,
    timeout_s: float = 60.0,
    startup_s: float | None = None,
    threads: int = 1,
) -> PeerTrainingResult:
    """Train ``model`` one step per batch of ``batches`` (``(inputs, target)``) with the model
    split by torch.distributed.pipelining over ``devices`` (one rank per device, in order) and
    ``schedule``; emulate ``cluster``'s devices and network as ``run_local`` does. The whole
    run ends within ``timeout_s`` plus ``startup_s`` (the ranks' start and split of the model;
    by default 20 s plus 10 s per rank per core): a run that has not finished by then is
    stopped and raises ``PeerScheduleHung``."""
    batch = _check(model, batches, devices, loss_fn, cluster, microbatches, schedule, emulate)
    points = list(split_points or even_split_points(model, len(devices)))
    if len(points) != len(devices) - 1:
        raise ValueError(
            f"{len(devices)} devices need {len(devices) - 1} split points, got {points}"
        )
    mb_args = tuple(
        v.narrow(0, 0, v.shape[0] // microbatches) if isinstance(v, torch.Tensor) else v
        for v in batches[0][0]
    )
    table = [PeerRank(rank, device) for rank, device in enumerate(devices)]
    with tempfile.TemporaryDirectory(prefix="dora_peer_train_") as run_dir:
        config = PeerTrainConfig(
            inputs_path=os.path.join(run_dir, "inputs.pt"),
            split_points=points,
            devices=list(devices),
            result_path=os.path.join(run_dir, "result.pt"),
            schedule=schedule,
            microbatches=microbatches,
            lr=lr,
            momentum=momentum,
            warmup=warmup,
            progress_path=os.path.join(run_dir, "progress"),
            timeout_s=timeout_s,
            emulate=emulate,
            cluster=cluster.to_json() if cluster is not None else None,
            time_scale=time_scale,
            ledger_path=os.path.join(run_dir, "ledger"),
            threads=threads,
        )
        payload = {"model": model, "mb_args": mb_args, "batches": list(batches), "loss_fn": loss_fn}
        torch.save(payload, config.inputs_path)
        started = time.monotonic()
        allowance_s = _split_allowance_s(len(table)) if startup_s is None else startup_s
        _spawn_with_deadline(config, table, timeout_s + allowance_s)
        wall_s = time.monotonic() - started
        raw = torch.load(config.result_path, weights_only=False)
    return _result(raw, config, batch, wall_s, points)


def _check(
    model: nn.Module,
    batches: Sequence[Batch],
    devices: Sequence[str],
    loss_fn: Callable[[Any, Any], torch.Tensor],
    cluster: Cluster | None,
    microbatches: int,
    schedule: str,
    emulate: bool,
) -> int:
    """The batch size, once the arguments are known to make a run."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if len(devices) < 2:
        raise ValueError(f"a pipeline needs at least 2 devices, got {list(devices)}")
    if emulate and cluster is None:
        raise ValueError("emulation needs the cluster (devices and network); pass cluster=")
    if not batches:
        raise ValueError("no batches to train on; pass at least one (inputs, target)")
    if schedule == "1f1b" and microbatches < len(devices):
        raise ValueError(
            f"Schedule1F1B needs at least as many microbatches as stages: {microbatches} "
            f"microbatches for {len(devices)} stages; raise microbatches or use schedule='gpipe'"
        )
    leaves = [v for v in pytree.tree_leaves(batches[0]) if isinstance(v, torch.Tensor)]
    batch = leaves[0].shape[0]
    if batch % microbatches:
        raise ValueError(f"batch {batch} does not split into {microbatches} equal microbatches")
    try:
        pickle.dumps(loss_fn)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same to the user
        raise ValueError(
            f"loss_fn {loss_fn!r} must pickle to reach the ranks (a module-level function or an "
            f"nn.Module, not a lambda or a local function): {exc}"
        ) from exc
    return int(batch)


def _spawn_with_deadline(config: PeerTrainConfig, table: list[PeerRank], deadline_s: float) -> None:
    """``spawn_ranks``, with every rank stopped once the run outlives ``deadline_s``: a hang
    never outlasts the run."""
    run_dir = os.path.dirname(config.result_path)
    procs: list[Any] = []
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        kill_all(procs)

    timer = threading.Timer(deadline_s, stop)
    timer.daemon = True
    timer.start()
    try:
        spawn_ranks(
            "dora_fx.peers.pipelining_train_rank", config.to_json(), table, run_dir, free_port(),
            timeout_s=config.timeout_s, threads=config.threads, progress_path=config.progress_path,
            procs=procs,
        )  # fmt: skip
    except RankFailedError as exc:
        if fired.is_set():  # the deadline stopped the ranks: that, not the kill, is the news
            raise _hung(config, deadline_s, None) from exc
        if "timed out" in str(exc).lower() or "timeout" in str(exc).lower():
            raise _hung(config, deadline_s, exc) from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise _hung(config, deadline_s, None)


def _split_allowance_s(ranks: int) -> float:
    """Wall seconds the ranks get to import torch and trace the model (``pipeline``) before
    the run's own timeout starts counting: they share the host's cores."""
    return 20.0 + 10.0 * ranks / max(os.cpu_count() or 1, 1)


def _hung(config: PeerTrainConfig, deadline_s: float, cause: Exception | None) -> PeerScheduleHung:
    progress = Path(config.progress_path or "")
    done = progress.read_text().split() if progress.is_file() else []
    steps = f"{done[0]} of {done[1]} steps done" if len(done) == 2 else "no measured step done"
    name = SCHEDULES[config.schedule]
    why = f"; {cause}" if cause is not None else ""
    return PeerScheduleHung(
        f"torch.distributed.pipelining {name} on gloo did not finish within {deadline_s:.0f} s "
        f"({steps}; {len(config.devices)} ranks x {config.microbatches} microbatches), all ranks "
        f"were stopped{why}. If it hangs, compare against schedule='gpipe'",
        schedule=config.schedule,
    )


def _result(
    raw: dict[str, Any], config: PeerTrainConfig, batch: int, wall_s: float, points: list[str]
) -> PeerTrainingResult:
    ranks = raw["ranks"]
    scale = raw["time_scale"]
    start = min(r["start"] for r in ranks)
    ends = [max(r["ends"][k] for r in ranks) for k in range(len(ranks[0]["ends"]))]
    iteration_s = [(end - before) / scale for before, end in zip([start, *ends], ends)]
    span_s = (ends[-1] - start) / scale if ends else 0.0
    mb_losses = ranks[-1]["losses"]
    notes = [f"torch.distributed.pipelining, {SCHEDULES[config.schedule]}, split at {points}"]
    return PeerTrainingResult(
        schedule=config.schedule,
        losses=[sum(step) / len(step) for step in mb_losses],
        microbatch_losses=mb_losses,
        iteration_s=iteration_s,
        samples_per_s=batch * len(ends) / span_s if span_s > 0 else 0.0,
        batch=batch,
        time_scale=scale,
        ranks=ranks,
        wall_s=wall_s,
        emulated=config.emulate,
        notes=notes,
    )


def peer_training_throughput(
    model: nn.Module,
    example: tuple[Any, ...],
    target: torch.Tensor,
    cluster: Cluster,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *,
    devices: Sequence[str] | None = None,
    microbatches: int | None = None,
    steps: int = 3,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """For the training benchmark: the peer's emulated samples/s and iteration time on
    ``cluster`` (``devices`` in order, by default all of the cluster's) with Schedule1F1B, or
    with ScheduleGPipe when 1F1B hung (``hung_1f1b``, ``note`` says what happened);
    ``iteration_s`` is the median step's. ``example`` and ``target`` give the batch's shapes;
    the data is ``synthetic_batches`` of ``seed``. ``options`` go to
    ``run_pipelining_training`` (``time_scale``, ``timeout_s``, ...)."""
    names = list(devices or cluster.device_names)
    batches = synthetic_batches(example, target, steps, seed)
    mbs = microbatches or len(names)
    run = lambda schedule: run_pipelining_training(  # noqa: E731
        model, batches, names, loss_fn, cluster=cluster, microbatches=mbs, schedule=schedule,
        **options,
    )  # fmt: skip
    hung, note = False, "Schedule1F1B ran to completion on gloo"
    try:
        result = run("1f1b")
    except PeerScheduleHung as exc:
        hung, note = True, f"Schedule1F1B hung, ScheduleGPipe measured instead: {exc}"
        result = run("gpipe")
    return {
        "samples_per_s": result.samples_per_s,
        "iteration_s": sorted(result.iteration_s)[len(result.iteration_s) // 2],
        "schedule_used": SCHEDULES[result.schedule],
        "hung_1f1b": hung,
        "note": note,
        "losses": result.losses,
        "time_scale": result.time_scale,
        "predicted_bottleneck_step_s": max(r.get("predicted_step_s", 0.0) for r in result.ranks),
        "microbatches": mbs,
        "devices": names,
    }
