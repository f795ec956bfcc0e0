"""One rank of a torch.distributed.pipelining peer run: ``python -m dora_fx.peers.pipelining_rank
--worker CONFIG_JSON``, started by ``run_pipelining`` through ``spawn_ranks``.

Each rank builds the split itself (``Pipe`` objects do not pickle) from the saved model, keeps
only its stage and serves it with ``ScheduleGPipe``, emulated by ``peers.pipelining_emulation``.
It warms up (not emulated, not measured), then runs the closed loop of ``in_flight`` requests:
rank 0 releases a request when the one ``in_flight`` before it is done, which the last stage
tells it with a small token once the outputs reached the sink (the cluster's source, as for
Dora's plans; emulated, the token waits for the outputs' bytes to cross the network), or, over
a real network (``PeerConfig.return_outputs``), by sending rank 0 the outputs' bytes
themselves (``pipelining_sink``). Rank 0
gathers the ranks' figures and writes the result; the last stage writes the outputs.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..runtime.compute_emulation import ComputeStretch
from ..runtime.distributed.config import STARTUP_TIMEOUT_S
from ..runtime.distributed.worker import die_with_parent, run_worker
from .pipelining_config import PeerConfig
from .pipelining_emulation import _Emulation, _start_emulation
from .pipelining_sink import SinkArrivals, output_bytes, send_outputs

__all__ = ["main"]

_TOKEN_TAG = 7


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
        warm_out = None
        for r in range(warmup):
            if r == 1:
                cpu_after_first = time.process_time()  # the recorded first step is slower
            warm_out = _step(schedule, rank, last, requests[r])
        items = max(warmup - 1, 1) * config.microbatches
        cpu_item_s = (time.process_time() - cpu_after_first) / items
        _barrier(control)
        scale = _start_emulation(config, emulation, control, cpu_item_s)
        emulation.stretch = ComputeStretch(emulation.stretch.factor)
        emulation.forwards, emulation.stream_start = 0, len(emulation.cpu_samples)
        arrivals = _sink_arrivals(config, rank, last, control, tokens, warm_out, len(requests))
        # Phase 2: the measured stream.
        released: list[float] = []
        completed: list[float] = []
        window = config.in_flight or world_size
        pending: list[tuple[Any, torch.Tensor]] = []
        start = time.monotonic()
        for r, request in enumerate(requests):
            if rank == 0:
                if r >= window:
                    completed.append(_arrival(arrivals, tokens, last, len(completed)))
                    write_progress(config, len(completed), len(requests))
                # issued when the request ``window`` before it returned, as run_local counts
                released.append(completed[r - window] if r >= window else start)
            out = _step(schedule, rank, last, request)
            if rank == last and _returns_outputs(config, last):
                send_outputs(out, tokens, pending)
            elif rank == last:
                _return(config, emulation, r, out, pending, tokens)
                if config.keep_outputs:
                    outputs.append(out)
        if rank == 0:
            while len(completed) < len(requests):
                completed.append(_arrival(arrivals, tokens, last, len(completed)))
                write_progress(config, len(completed), len(requests))
    if emulation.shaper is not None:
        emulation.shaper.close(config.timeout_s)
    for work, _ in pending:
        work.wait()
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


def _return(
    config: PeerConfig,
    emulation: _Emulation,
    request: int,
    out: Any,
    pending: list[tuple[Any, torch.Tensor]],
    tokens: Any,
) -> None:
    """The last stage: request ``request`` is done when its outputs reach the sink (the
    cluster's source device, as for Dora's plans), which the token to rank 0 tells, stamped
    at that arrival: emulated, it leaves after the outputs' bytes crossed the network."""

    def tell() -> None:
        token = torch.tensor([request, int(time.monotonic() * 1e6)], dtype=torch.int64)
        pending.append((dist.isend(token, 0, group=tokens, tag=_TOKEN_TAG), token))

    sink = (config.cluster or {}).get("source")
    here = config.devices[-1]
    if emulation.shaper is None or sink is None or sink == here:
        tell()
        return
    leaves = torch.utils._pytree.tree_leaves(out)
    nbytes = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
    emulation.shaper.submit(0, here, sink, nbytes, tell, True)


def _returns_outputs(config: PeerConfig, last: int) -> bool:
    """The outputs' bytes go to the sink themselves (``pipelining_sink``): asked for, the sink
    is rank 0's device and another rank's stage is last."""
    sink = (config.cluster or {}).get("source")
    return config.return_outputs and config.warmup > 0 and last > 0 and sink == config.devices[0]


def _sink_arrivals(
    config: PeerConfig, rank: int, last: int, control: Any, tokens: Any, warm_out: Any, count: int
) -> SinkArrivals | None:
    """Rank 0's receiver of the outputs when they are returned (every rank calls it: the last
    tells the others the outputs' size)."""
    if not _returns_outputs(config, last):
        return None
    size = torch.tensor([output_bytes(warm_out).numel() if rank == last else 0])
    dist.broadcast(size, src=last, group=control)
    if rank != 0:
        return None
    return SinkArrivals(tokens, last, int(size), count, config.timeout_s)


def _arrival(arrivals: SinkArrivals | None, tokens: Any, last: int, index: int) -> float:
    return arrivals.take(index) if arrivals is not None else _take_token(tokens, last)


def _take_token(group: Any, last: int) -> float:
    token = torch.empty(2, dtype=torch.int64)
    work = dist.irecv(token, last, group=group, tag=_TOKEN_TAG)
    assert work is not None
    work.wait()
    return int(token[1]) * 1e-6


def _barrier(group: Any) -> None:
    dist.barrier(group=group)


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


def write_progress(config: Any, done: int, total: int) -> None:
    """Tell the launcher how far the run is (``config.progress_path``, when it asks)."""
    if config.progress_path:
        with open(config.progress_path, "w") as handle:
            handle.write(f"{done} {total}\n")


def worker_main(prog: str, config_type: Any, run_rank: Any) -> int:
    """A peer rank's entry point: ``--worker CONFIG_JSON`` read into ``config_type``, then
    ``run_rank(config, rank, world)`` under the runtime's worker supervision."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--worker", metavar="CONFIG_JSON", required=True)
    args = parser.parse_args()
    die_with_parent()
    config = config_type(**json.loads(Path(args.worker).read_text()))
    return run_worker(lambda rank, world: run_rank(config, rank, world), config.result_path)


def main() -> int:
    return worker_main("dora_fx.peers.pipelining_rank", PeerConfig, _run_rank)


if __name__ == "__main__":
    raise SystemExit(main())
