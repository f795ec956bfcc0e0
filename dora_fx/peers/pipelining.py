"""The peer, run for real: a model split by ``torch.distributed.pipelining`` and served by its
``ScheduleGPipe``, one process per device, emulated exactly as Dora's runtime is.

What a hand-written pipelining user does: ``pipeline(model, mb_args, split_spec={name:
SplitPoint.BEGINNING})`` at evenly spaced layers (``even_split_points``: ``n // stages`` layers
per stage, as torch's examples do), stage ``k`` on the ``k``-th device in the order given (a
scenario's order), and one ``schedule.step(request)`` per request.

This module is the launcher side: ``run_pipelining`` prepares a run (the ``PeerConfig`` and the
saved model and requests), starts one ``peers.pipelining_rank`` process per device and reads
the result into a ``DistributedResult``. Load is the same as ``run_local``'s: a warm-up (not
emulated, not measured), then a closed loop of ``in_flight`` requests; latency and throughput
are in emulated device seconds (``peers.pipelining_emulation``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..cost_models.cluster import Cluster
from ..cost_models.device import Device
from ..runtime.distributed.launch import DistributedResult, free_port, host_device
from ..runtime.distributed.supervisor import spawn_ranks
from .pipelining_config import PeerConfig

__all__ = ["even_split_points", "run_pipelining", "PeerConfig", "PeerRank"]


def even_split_points(model: nn.Module, stages: int) -> list[str]:
    """Names of the layers where stages 1.. begin: the model's longest run of numbered
    children (``transformer.h``, ``mobilenet_v2.layer``, ...), ``n // stages`` layers each."""
    best: tuple[str, int] = ("", 0)
    for name, module in model.named_modules():
        numbered = [c for c, _ in module.named_children() if c.isdigit()]
        if len(numbered) > best[1]:
            best = (name, len(numbered))
    prefix, layers = best
    if layers < stages:
        raise ValueError(
            f"evenly spaced split points need at least {stages} repeated layers, the model's "
            f"longest run ({prefix or 'none'}) has {layers}; use fewer stages or a deeper model"
        )
    per_stage = layers // stages
    return [f"{prefix}.{k * per_stage}" if prefix else str(k * per_stage) for k in range(1, stages)]


@dataclass(frozen=True)
class PeerRank:
    rank: int
    device: str

    def describe(self) -> str:
        return f"rank {self.rank} (pipelining stage {self.rank} on device {self.device!r})"


def run_pipelining(
    model: nn.Module,
    requests: Sequence[tuple[Any, ...]],
    devices: Sequence[str],
    *,
    cluster: Cluster | None = None,
    split_points: Sequence[str] | None = None,
    microbatches: int = 1,
    in_flight: int = 0,
    warmup: int = 3,
    emulate: bool = True,
    host: Device | str | None = None,
    time_scale: float | None = None,
    timeout_s: float = 60.0,
    threads: int = 1,
    keep_outputs: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DistributedResult:
    """Serve ``requests`` (tuples of positional inputs, one batch each) with the model split
    by torch.distributed.pipelining over ``devices`` (one rank per device, in order); emulate
    ``cluster``'s devices and network as ``run_local`` does."""
    if len(devices) < 2:
        raise ValueError(f"a pipeline needs at least 2 devices, got {list(devices)}")
    if emulate and cluster is None:
        raise ValueError("emulation needs the cluster (devices and network); pass cluster=")
    points = list(split_points or even_split_points(model, len(devices)))
    if len(points) != len(devices) - 1:
        raise ValueError(
            f"{len(devices)} devices need {len(devices) - 1} split points, got {points}"
        )
    first = tuple(requests[0])
    mb_args = tuple(
        v.narrow(0, 0, v.shape[0] // microbatches) if isinstance(v, torch.Tensor) else v
        for v in first
    )
    table = [PeerRank(rank, device) for rank, device in enumerate(devices)]
    with tempfile.TemporaryDirectory(prefix="dora_peer_") as run_dir:
        config = PeerConfig(
            inputs_path=os.path.join(run_dir, "inputs.pt"),
            split_points=points,
            devices=list(devices),
            result_path=os.path.join(run_dir, "result.pt"),
            outputs_path=os.path.join(run_dir, "outputs.pt"),
            progress_path=os.path.join(run_dir, "progress"),
            microbatches=microbatches,
            in_flight=in_flight,
            warmup=warmup,
            timeout_s=timeout_s,
            emulate=emulate,
            cluster=cluster.to_json() if cluster is not None else None,
            host=host_device(host).to_json() if emulate else None,
            time_scale=time_scale,
            ledger_path=os.path.join(run_dir, "ledger"),
            threads=threads,
            keep_outputs=keep_outputs,
        )
        payload = {"model": model, "mb_args": mb_args, "requests": [tuple(r) for r in requests]}
        torch.save(payload, config.inputs_path)
        started = time.monotonic()
        spawn_ranks(
            "dora_fx.peers.pipelining_rank", config.to_json(), table, run_dir, free_port(),
            progress, timeout_s=timeout_s, threads=threads, progress_path=config.progress_path,
        )  # fmt: skip
        wall_s = time.monotonic() - started
        raw = torch.load(config.result_path, weights_only=True)
        outputs = torch.load(config.outputs_path, weights_only=True) if keep_outputs else []
    notes = [f"torch.distributed.pipelining, ScheduleGPipe, split at {points}"]
    return DistributedResult.from_raw(raw, outputs, wall_s, emulate, notes)
