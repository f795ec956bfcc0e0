"""The peer, run for real: a model split by ``torch.distributed.pipelining`` and served by its
``ScheduleGPipe``, one process per device, emulated exactly as Dora's runtime is.

What a hand-written pipelining user does: ``pipeline(model, mb_args, split_spec={name:
SplitPoint.BEGINNING})`` at evenly spaced layers (``even_split_points``: ``n // stages`` layers
per stage, as torch's examples do), stage ``k`` on the ``k``-th device in the order given (a
scenario's order), and one ``schedule.step(request)`` per request.

Emulation is the same as ``runtime.distributed``'s, hooked into torch's code:

* compute: the stage submodule's ``forward`` is wrapped in a ``ComputeStretch`` whose factor
  makes one forward last the device's roofline time of the ops it records in the warm-up
  (``CostRecorder``), against the running median of its measured CPU time;
* transfers: ``schedules._sorted_batch_p2p`` (what ``ScheduleGPipe`` posts its sends and
  receives through) hands every send to the same ``LinkShaper`` and shared-medium
  ``MediumLedger``; the real ``dist.isend`` is posted when the emulated transfer ends, and the
  schedule's wait on that send returns after it.

Load is the same as ``run_local``'s: a warm-up (not emulated, not measured), then a closed
loop of ``in_flight`` requests; the last stage tells rank 0 when each request is done (a small
token, not shaped, as Dora's outputs return unshaped). Latency and throughput are in emulated
device seconds. Each rank builds the split itself (``Pipe`` objects do not pickle) from the
saved model and keeps only its stage.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..cost_models.cluster import Cluster
from ..cost_models.device import Device
from ..runtime.compute_emulation import ComputeStretch, dilation, measured_reference_s
from ..runtime.cost_recorder import CostRecorder, OpCost, stage_time_s
from ..runtime.distributed.launch import DistributedResult, free_port, host_device
from ..runtime.distributed.supervisor import spawn_ranks
from ..runtime.distributed.worker import die_with_parent, run_worker
from ..runtime.network_emulation import LinkShaper, MediumLedger, resource_keys

__all__ = ["even_split_points", "run_pipelining", "PeerConfig", "PeerRank"]

_TOKEN_TAG = 7
STARTUP_TIMEOUT_S = 60.0


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


@dataclass
class PeerConfig:
    """What every rank of one peer run is told (JSON; tensors live in ``inputs_path``)."""

    inputs_path: str  # torch.save of {"model", "mb_args", "requests"}
    split_points: list[str]
    devices: list[str]  # stage k runs on devices[k]
    result_path: str
    outputs_path: str
    progress_path: str | None = None
    microbatches: int = 1
    in_flight: int = 0
    warmup: int = 3
    timeout_s: float = 60.0
    emulate: bool = False
    cluster: dict[str, Any] | None = None
    host: dict[str, Any] | None = None
    time_scale: float | None = None
    ledger_path: str | None = None
    threads: int = 1
    keep_outputs: bool = True

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
            "dora_fx.peers.pipelining", config.to_json(), table, run_dir, free_port(),
            progress, timeout_s=timeout_s, threads=threads, progress_path=config.progress_path,
        )  # fmt: skip
        wall_s = time.monotonic() - started
        raw = torch.load(config.result_path, weights_only=True)
        outputs = torch.load(config.outputs_path, weights_only=True) if keep_outputs else []
    return DistributedResult(
        outputs=outputs,
        latency_s=raw["latency_s"],
        throughput_rps=raw["throughput_rps"],
        time_scale=raw["time_scale"],
        ranks=raw["ranks"],
        wall_s=wall_s,
        emulated=emulate,
        notes=[f"torch.distributed.pipelining, ScheduleGPipe, split at {points}"],
    )


# -- worker side -------------------------------------------------------------------------------


class _DeferredSend:
    """A send the link shaper posts when its emulated transfer ends. To the schedule it is
    done at once, as a socket send is once the kernel has buffered it: the peer does not wait
    for its transfers (Dora's runtime does not either); ``finish`` waits for the real send."""

    def __init__(self, op: dist.P2POp, timeout_s: float) -> None:
        self.op, self.timeout_s = op, timeout_s
        self.posted = threading.Event()
        self.work: Any = None

    def post(self) -> None:
        op = self.op
        self.work = dist.isend(op.tensor, op.peer, group=op.group, tag=op.tag)
        self.posted.set()

    def wait(self, timeout: Any = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def done(self) -> bool:
        return self.posted.is_set() and self.work.is_completed()

    def finish(self) -> None:
        if not self.posted.wait(self.timeout_s):
            raise TimeoutError(f"the emulated link did not deliver a send in {self.timeout_s:g} s")
        self.work.wait()


class _Emulation:
    """This rank's compute stretch and link shaper, hooked into the schedule."""

    def __init__(self, rank: int, devices: list[str], timeout_s: float) -> None:
        self.rank, self.devices, self.timeout_s = rank, devices, timeout_s
        self.stretch = ComputeStretch(None)
        self.shaper: LinkShaper | None = None
        self.ops: list[OpCost] | None = None  # recorded on the first forward
        self.device_item_s = 0.0
        self.cpu_samples: list[float] = []
        self.device_wall_s: float | None = None
        self.forwards = 0
        self.bytes_sent = 0
        self.stream_start = 0  # index of the stream's first CPU sample
        self.sends: list[_DeferredSend] = []

    def wrap_forward(self, module: nn.Module) -> None:
        forward = module.forward

        def stretched(*args: Any, **kwargs: Any) -> Any:
            if self.ops is None:  # the first forward counts the stage's ops (not a sample)
                with CostRecorder() as recorder:
                    out = forward(*args, **kwargs)
                self.ops = recorder.ops
                return out
            cpu_before = self.stretch.busy_cpu_s
            self.stretch.resume()
            out = forward(*args, **kwargs)
            self.stretch.settle()
            self.forwards += 1
            self.cpu_samples.append(self.stretch.busy_cpu_s - cpu_before)
            self._rescale()
            return out

        module.forward = stretched  # type: ignore[method-assign]

    def _rescale(self) -> None:
        # as runtime.distributed: an item lasts the device's time times its own deviation
        if self.device_wall_s is None:
            return
        reference = measured_reference_s(self.cpu_samples, self.stream_start)
        if reference > 0:
            self.stretch.factor = self.device_wall_s / reference

    def sorted_batch_p2p(
        self, original: Callable[..., dict[int, list[Any]]]
    ) -> Callable[..., dict[int, list[Any]]]:
        def shaped(p2p_ops: list[dist.P2POp], desc: str | None = None) -> dict[int, list[Any]]:
            shaper = self.shaper
            if shaper is None:
                return original(p2p_ops, desc=desc)
            sends = [op for op in p2p_ops if op.op is dist.isend]
            self.sends = [d for d in self.sends if not d.done()]
            works = original([op for op in p2p_ops if op.op is not dist.isend], desc=desc)
            for op in sends:
                deferred = _DeferredSend(op, self.timeout_s)
                nbytes = op.tensor.numel() * op.tensor.element_size()
                self.bytes_sent += nbytes
                self.sends.append(deferred)
                src, dst = self.devices[self.rank], self.devices[op.peer]
                shaper.submit(op.peer, src, dst, nbytes, deferred.post, True)
                works.setdefault(op.peer, []).append(deferred)
            return works

        return shaped


def _run_rank(config: PeerConfig, rank: int, world_size: int) -> None:
    from torch.distributed.pipelining import ScheduleGPipe, SplitPoint, pipeline, schedules

    torch.set_num_threads(config.threads)
    if world_size != len(config.devices):
        raise ValueError(
            f"the peer run has {len(config.devices)} stages but {world_size} ranks were started"
        )
    startup = timedelta(seconds=max(config.timeout_s, STARTUP_TIMEOUT_S))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=startup)
    control = dist.new_group(backend="gloo", timeout=startup)
    tokens = dist.new_group(backend="gloo", timeout=startup)
    inputs = torch.load(config.inputs_path, weights_only=False)
    spec = {name: SplitPoint.BEGINNING for name in config.split_points}
    pipe = pipeline(inputs["model"], mb_args=inputs["mb_args"], split_spec=spec)
    if pipe.num_stages != world_size:
        raise ValueError(
            f"split at {config.split_points} gave {pipe.num_stages} stages, expected {world_size}"
        )
    stage = pipe.build_stage(rank, torch.device("cpu"))
    del pipe, inputs["model"]
    emulation = _Emulation(rank, config.devices, config.timeout_s)
    emulation.wrap_forward(stage.submod)
    schedules._sorted_batch_p2p = emulation.sorted_batch_p2p(schedules._sorted_batch_p2p)  # type: ignore[attr-defined]
    schedule = ScheduleGPipe(stage, n_microbatches=config.microbatches)
    requests = inputs["requests"]
    last = world_size - 1
    warmup = min(config.warmup, len(requests))
    outputs: list[Any] = []
    with torch.no_grad():
        # Phase 1: warm up (shape inference, op counting, CPU-time reference); not emulated.
        cpu_after_first = time.process_time()
        for r in range(warmup):
            if r == 1:
                cpu_after_first = time.process_time()  # the recorded first step is slower
            _step(schedule, rank, last, requests[r])
        items = max(warmup - 1, 1) * config.microbatches
        cpu_item_s = (time.process_time() - cpu_after_first) / items
        _barrier(control)
        scale = _start_emulation(config, emulation, control, cpu_item_s)
        emulation.stretch = ComputeStretch(emulation.stretch.factor)
        emulation.forwards, emulation.stream_start = 0, len(emulation.cpu_samples)
        # Phase 2: the measured stream.
        released: list[float] = []
        completed: list[float] = []
        window = config.in_flight or world_size
        pending: list[tuple[Any, torch.Tensor]] = []
        start = time.monotonic()
        for r, request in enumerate(requests):
            if rank == 0:
                if r >= window:
                    completed.append(_take_token(tokens, last))
                    _progress(config, len(completed), len(requests))
                # issued when the request ``window`` before it returned, as run_local counts
                released.append(completed[r - window] if r >= window else start)
            out = _step(schedule, rank, last, request)
            if rank == last:
                token = torch.tensor([r, int(time.monotonic() * 1e6)], dtype=torch.int64)
                pending.append((dist.isend(token, 0, group=tokens, tag=_TOKEN_TAG), token))
                if config.keep_outputs:
                    outputs.append(out)
        if rank == 0:
            while len(completed) < len(requests):
                completed.append(_take_token(tokens, last))
                _progress(config, len(completed), len(requests))
        for work, _ in pending:
            work.wait()
    if emulation.shaper is not None:
        emulation.shaper.close(config.timeout_s)
    for send in emulation.sends:
        send.finish()
    metrics = _metrics(rank, config.devices[rank], emulation, scale)
    gathered: list[Any] = [None] * world_size if rank == 0 else []
    dist.gather_object(metrics, gathered if rank == 0 else None, dst=0, group=control)
    if rank == last and config.keep_outputs:
        torch.save(outputs, config.outputs_path)
    if rank == 0:
        latency_s = [(done - rel) / scale for rel, done in zip(released, completed)]
        span_s = (max(completed) - released[0]) / scale if completed else 0.0
        torch.save(
            {
                "latency_s": latency_s,
                "throughput_rps": len(completed) / span_s if span_s > 0 else 0.0,
                "time_scale": scale,
                "ranks": gathered,
            },
            config.result_path,
        )
    _barrier(control)


def _step(schedule: Any, rank: int, last: int, request: tuple[Any, ...]) -> Any:
    out = schedule.step(*request) if rank == 0 else schedule.step()
    return out if rank == last else None


def _take_token(group: Any, last: int) -> float:
    token = torch.empty(2, dtype=torch.int64)
    work = dist.irecv(token, last, group=group, tag=_TOKEN_TAG)
    assert work is not None
    work.wait()
    return int(token[1]) * 1e-6


def _barrier(group: Any) -> None:
    dist.barrier(group=group)


def _start_emulation(
    config: PeerConfig, emulation: _Emulation, control: Any, cpu_item_s: float
) -> float:
    """Dilation, compute factor and link shaper, as ``runtime.distributed`` sets them."""
    reference = measured_reference_s(emulation.cpu_samples) or emulation.stretch.busy_cpu_s
    if not config.emulate:
        return 1.0
    assert config.cluster is not None and config.host is not None and config.ledger_path
    cluster = Cluster.from_json(config.cluster)
    device = cluster.device(config.devices[emulation.rank])
    device_item_s = emulation.device_item_s = stage_time_s(device, emulation.ops or [])
    stretch = emulation.stretch
    inflation = stretch.busy_wall_s / stretch.busy_cpu_s if stretch.busy_cpu_s else 1.0
    peak = torch.tensor(
        [reference / max(device_item_s, 1e-12), device_item_s, inflation], dtype=torch.float64
    )
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=control)
    cpu = torch.tensor([cpu_item_s], dtype=torch.float64)
    dist.all_reduce(cpu, op=dist.ReduceOp.SUM, group=control)
    need, bottleneck_s, worst_inflation = (float(v) for v in peak)
    scale = config.time_scale or dilation(
        need, len(config.devices), float(cpu), bottleneck_s, worst_inflation
    )
    emulation.device_wall_s = scale * device_item_s
    emulation.stretch.factor = emulation.device_wall_s / reference if reference > 0 else scale
    keys = resource_keys(cluster.network, config.devices)
    ledger = MediumLedger(config.ledger_path, keys)
    emulation.shaper = LinkShaper(cluster.network, ledger, scale, emulation.rank)
    return scale


def _metrics(rank: int, device: str, emulation: _Emulation, scale: float) -> dict[str, Any]:
    stretch = emulation.stretch
    samples = emulation.cpu_samples
    return {
        "rank": rank,
        "stage": rank,
        "device": device,
        "items": emulation.forwards,
        "busy_s": stretch.busy_wall_s / scale,
        "overrun_s": stretch.overrun_wall_s / scale,
        "predicted_item_s": emulation.device_item_s,
        "host_measured_item_s": statistics.median(samples) if samples else 0.0,
        "bytes_sent": emulation.bytes_sent,
        "received": [],
    }


def _progress(config: PeerConfig, done: int, total: int) -> None:
    if config.progress_path:
        with open(config.progress_path, "w") as handle:
            handle.write(f"{done} {total}\n")


def main() -> int:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m dora_fx.peers.pipelining")
    parser.add_argument("--worker", metavar="CONFIG_JSON", required=True)
    args = parser.parse_args()
    die_with_parent()
    config = PeerConfig(**json.loads(Path(args.worker).read_text()))
    return run_worker(lambda rank, world: _run_rank(config, rank, world), config.result_path)


if __name__ == "__main__":
    raise SystemExit(main())
