"""Distributed runtime, driver: what one rank does from start to end of a run.

``run_rank`` joins the process group, loads the rank's stage from the plan folder and hands it
to a ``_Driver``, which

1. warms up: runs ``warmup`` requests unmeasured and not emulated, recording the stage's ops
   (``emulation.CostRecorder``) and its CPU time per item;
2. starts emulation (when asked): the dilation every rank agrees on (``time_scale``), the
   compute stretch of this device and the link shaper on the shared-medium ledger;
3. streams the measured requests: rank 0 releases them (closed loop of ``in_flight``, or open
   loop at ``rate_rps``), cuts them into microbatches, scatters the inputs, runs its own stage
   and collects the outputs; every other rank runs its stage once per item;
4. reports: rank 0 gathers every rank's metrics and writes the result.

Faults injected on purpose (``RunConfig.fault``) exercise the failure path; tensors move
through ``distributed_transport.DistTransport``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..ir import Plan
from .distributed_transport import (
    DistTransport,
    RankInfo,
    StageWiring,
    batch_rows,
    rank_table,
    split_sizes,
)
from .emulation import ComputeStretch

__all__ = ["RunConfig", "run_rank", "STARTUP_TIMEOUT_S"]


@dataclass
class RunConfig:
    """What every rank of one run is told (JSON, so the launcher can hand it to processes).

    ``in_flight``: requests rank 0 lets into the pipeline at once (closed loop; 0 means one
    per rank); ``rate_rps``: release requests at this rate instead (open loop, device time).
    ``warmup``: requests run first, unmeasured and not emulated, to count each stage's
    operations. ``time_scale``: wall seconds per emulated second (None: the smallest at which
    every device can be emulated, times ``EMULATION_MARGIN``). ``host``: the calibrated host as
    ``Device`` JSON. ``compute_reference``: what a device's predicted time is scaled against,
    the stage's ``"measured"`` host time or the host ``"profile"`` (see ``emulation``). ``fault``: ``{"rank": r, "item": k, "kind": "kill" | "hang"}`` makes a rank
    fail on purpose (tests of the failure path).
    """

    plan_dir: str
    requests_path: str
    result_path: str | None = None
    progress_path: str | None = None
    microbatches: int = 1
    in_flight: int = 0
    rate_rps: float | None = None
    warmup: int = 3
    timeout_s: float = 60.0
    emulate: bool = False
    time_scale: float | None = None
    host: dict[str, Any] | None = None
    compute_reference: str = "measured"
    ledger_path: str | None = None
    device: str = "cpu"
    threads: int = 1
    keep_outputs: bool = True
    fault: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**data)


STARTUP_TIMEOUT_S = 60.0


def run_rank(config: RunConfig, rank: int, world_size: int) -> dict[str, Any] | None:
    """Run one rank to the end; rank 0 returns the run's result (and writes it)."""
    from ..serialize import load_stage  # serialize imports runtime.local; keep import lazy

    torch.set_num_threads(config.threads)
    stage, manifest = load_stage(config.plan_dir, _stage_of(config.plan_dir, rank, world_size))
    wiring = StageWiring.from_manifest(manifest)
    me = wiring.table[rank]
    device = torch.device(config.device)
    module = stage.module.to(device)
    # Ranks start at different times (imports, loading weights): rendezvous and collectives
    # get room for that; P2P waits use the run's timeout_s.
    startup = timedelta(seconds=max(config.timeout_s, STARTUP_TIMEOUT_S))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=startup)
    control = dist.new_group(backend="gloo", timeout=startup)
    transport = DistTransport(me, wiring, config.timeout_s, device)
    driver = _Driver(config, me, wiring, module, transport, control)
    result = driver.run(manifest)  # on failure the process ends without a goodbye to peers
    transport.close()
    metrics: list[Any] = [None] * world_size if rank == 0 else []
    dist.gather_object(driver.metrics(), metrics if rank == 0 else None, dst=0, group=control)
    if rank == 0:
        assert result is not None
        result["ranks"] = metrics
        if config.result_path:
            torch.save(result, config.result_path)
    dist.barrier(group=control)
    return result


def _stage_of(plan_dir: str, rank: int, world_size: int) -> int:
    from pathlib import Path

    from ..errors import PlanFolderError
    from ..serialize import _read_manifest

    table = rank_table(Plan.from_json(_read_manifest(Path(plan_dir))["plan"]))
    if world_size != len(table):
        raise PlanFolderError(
            f"{plan_dir} holds a plan for {len(table)} ranks (one per device of every stage: "
            f"{[r.device for r in table]}), but {world_size} were started; start {len(table)}"
        )
    return table[rank].stage


class _Driver:
    def __init__(
        self,
        config: RunConfig,
        me: RankInfo,
        wiring: StageWiring,
        module: torch.nn.Module,
        transport: DistTransport,
        control: Any,
    ) -> None:
        self.config, self.me, self.wiring, self.module = config, me, wiring, module
        self.transport, self.control = transport, control
        self.time_scale = 1.0
        self.items = 0
        self.first_measured_item = 0
        self.device_item_s = self.host_item_s = self.host_measured_item_s = 0.0
        self._cpu_samples: list[float] = []
        self._device_wall_s: float | None = None  # emulated wall seconds of one item
        self._ledger: Any = None
        self._clocks = self._stream_clocks = (0.0, 0.0, 0.0)
        self.warmup_cpu_item_s, self.inflation = 0.0, 1.0
        self._stream_start = 0  # index of the stream's first CPU sample

    def run(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        config, m = self.config, self.config.microbatches
        requests: list[list[Any]] = []
        if self.me.rank == 0:
            requests = torch.load(config.requests_path, weights_only=True)
        counts = [len(requests), min(config.warmup, len(requests))]
        dist.broadcast_object_list(counts, src=0, group=self.control)
        total, warmup = counts
        # Phase 1: warm up and count the stage's operations (no emulation, not measured).
        ops = self._serve(requests[:warmup], range(warmup * m), record=True)
        self._start_emulation(manifest, ops)
        dist.barrier(group=self.control)
        # Phase 2: the measured stream.
        self.transport.stretch = ComputeStretch(self.transport.stretch.factor)
        self.items, self.first_measured_item = 0, warmup * m
        self._stream_start = len(self._cpu_samples)
        return self._stream(requests, range(warmup * m, (warmup + total) * m))

    def _serve(self, requests: list[list[Any]], items: range, record: bool = False) -> list[Any]:
        """Warm-up: rank 0 feeds requests one at a time; everyone runs its items."""
        from .emulation import CostRecorder, measured_reference_s

        ops: list[Any] = []
        cpu_after_first = time.process_time()
        for item in items:
            if item == items.start + 1:
                cpu_after_first = time.process_time()  # the recorded first item is slower
            if self.me.rank == 0:
                request = requests[(item - items.start) // self.config.microbatches]
                self.transport.scatter_inputs(item, self._microbatch(request, item - items.start))
            recorder = CostRecorder() if record and not ops else None
            if recorder is not None:
                with recorder:
                    self._run_item(item, recording=True)
                ops = recorder.ops or [None]
            else:
                self._run_item(item)
        if self.me.rank == 0:
            for item in items:
                self.transport.collect_outputs(item, sorted(self.wiring.output_dims))
        # process CPU (every thread) per item, and how much longer compute took in wall time
        self.warmup_cpu_item_s = (time.process_time() - cpu_after_first) / max(len(items) - 1, 1)
        stretch = self.transport.stretch
        self.inflation = stretch.busy_wall_s / stretch.busy_cpu_s if stretch.busy_cpu_s else 1.0
        # CPU seconds per item (the recorded, slower first item aside when there are others)
        self.host_measured_item_s = (
            measured_reference_s(self._cpu_samples) or self.transport.stretch.busy_cpu_s
        )
        return [op for op in ops if op is not None]

    def _run_item(self, item: int, recording: bool = False) -> None:
        from ..comm_ops import use_transport

        transport = self.transport
        transport.item = item
        cpu_before = transport.stretch.busy_cpu_s
        transport.stretch.resume()
        with torch.no_grad(), use_transport(transport):  # type: ignore[arg-type]
            outputs = self.module(*transport.inputs())
        transport.stretch.settle()
        transport.send_outputs(list(outputs))
        self.items += 1
        if not recording:
            self._cpu_samples.append(transport.stretch.busy_cpu_s - cpu_before)
            self._rescale()

    def _rescale(self) -> None:
        """Measured reference: the mean CPU time per item of the recent items (the warm-up's
        and the stream's; ``emulation.measured_reference_s``)."""
        from .emulation import measured_reference_s

        if self.config.compute_reference != "measured" or self._device_wall_s is None:
            return
        reference = measured_reference_s(self._cpu_samples, self._stream_start)
        if reference > 0:
            self.transport.stretch.factor = self._device_wall_s / reference

    def _microbatch(self, request: list[Any], index: int) -> list[Any]:
        m = self.config.microbatches
        rows = batch_rows(request)
        if m == 1 or not rows:
            return request
        part = index % m
        start = sum(split_sizes(rows, [1.0] * m)[:part])
        size = split_sizes(rows, [1.0] * m)[part]
        return [
            v.narrow(0, start, size)
            if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows
            else v
            for v in request
        ]

    def _start_emulation(self, manifest: dict[str, Any], ops: list[Any]) -> None:
        from ..cost_models.cluster import Cluster
        from ..cost_models.device import Device
        from .emulation import (
            LinkShaper,
            MediumLedger,
            dilation,
            resource_keys,
            stage_time_s,
        )

        if not self.config.emulate:
            return
        if self.config.host is None or "cluster" not in manifest:
            raise ValueError(
                "emulation needs the calibrated host (RunConfig.host, from dora_fx.calibrate()) "
                "and the cluster in plan.json; pass emulate=False to run without it"
            )
        cluster = Cluster.from_json(manifest["cluster"])
        device, host = cluster.device(self.me.device), Device.from_json(self.config.host)
        self.device_item_s, self.host_item_s = stage_time_s(device, ops), stage_time_s(host, ops)
        reference = self._host_reference_s()
        # dilation at which this device can be emulated (its time must not be below the
        # host's), the bottleneck device, the host's contention; and the run's CPU per item
        peak = torch.tensor(
            [reference / max(self.device_item_s, 1e-12), self.device_item_s, self.inflation],
            dtype=torch.float64,
        )
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=self.control)
        cpu = torch.tensor([self.warmup_cpu_item_s], dtype=torch.float64)
        dist.all_reduce(cpu, op=dist.ReduceOp.SUM, group=self.control)
        need, bottleneck_s, inflation = (float(v) for v in peak)
        scale = self.config.time_scale or dilation(
            need, len(self.wiring.table), float(cpu), bottleneck_s, inflation
        )
        self.time_scale = scale
        factor = scale * self.device_item_s / reference if reference > 0 else scale
        self._device_wall_s = scale * self.device_item_s
        self.transport.stretch = ComputeStretch(factor)
        assert self.config.ledger_path is not None
        keys = resource_keys(cluster.network, [r.device for r in self.wiring.table])
        self._ledger = MediumLedger(self.config.ledger_path, keys)
        self.transport.shaper = LinkShaper(cluster.network, self._ledger, scale, self.me.rank)

    def _host_reference_s(self) -> float:
        if self.config.compute_reference == "profile":
            return self.host_item_s
        if self.config.compute_reference == "measured":
            return self.host_measured_item_s
        raise ValueError(
            f"compute_reference must be 'measured' or 'profile', got {self.config.compute_reference!r}"
        )

    def _stream(self, requests: list[list[Any]], items: range) -> dict[str, Any] | None:
        self._clocks = (time.monotonic(), time.thread_time(), time.process_time())
        try:
            return self._stream_items(requests, items)
        finally:
            wall, thread_cpu, process_cpu = self._clocks
            self._stream_clocks = (
                time.monotonic() - wall,
                time.thread_time() - thread_cpu,
                time.process_time() - process_cpu,
            )

    def _stream_items(self, requests: list[list[Any]], items: range) -> dict[str, Any] | None:
        m, fault = self.config.microbatches, self.config.fault or {}
        if self.me.rank != 0:
            for k, item in enumerate(items):
                if fault.get("rank") == self.me.rank and fault.get("item") == k:
                    _inject(fault)
                self._run_item(item)
            return None
        window = self.config.in_flight or len(self.wiring.table)
        released: list[float] = []
        done: list[tuple[list[Any], float]] = []
        start = time.monotonic()
        for r, request in enumerate(requests):
            while r - len(done) >= window and self.config.rate_rps is None:
                done.append(self._collect(items.start + len(done) * m))
                self._progress(len(done), len(requests))
            # A request is issued when its client sends it: at its time in the open loop, or
            # when the request ``window`` before it returned (closed loop), not when rank 0
            # gets round to it; time it waits for rank 0's stage is latency, as in the sim.
            if self.config.rate_rps:
                issued = start + r * self.time_scale / self.config.rate_rps
                _sleep_to(issued)
            else:
                issued = done[r - window][1] if r >= window else start
            released.append(issued)
            for k in range(m):
                item = items.start + r * m + k
                if fault.get("rank") == 0 and fault.get("item") == r * m + k:
                    _inject(fault)
                self.transport.scatter_inputs(item, self._microbatch(request, k))
                self._run_item(item)
        while len(done) < len(requests):
            done.append(self._collect(items.start + len(done) * m))
            self._progress(len(done), len(requests))
        return self._result(released, done)

    def _collect(self, first_item: int) -> tuple[list[Any], float]:
        positions = sorted(self.wiring.output_dims)
        parts, arrived = [], 0.0
        for item in range(first_item, first_item + self.config.microbatches):
            values, at = self.transport.collect_outputs(item, positions)
            parts.append(values)
            arrived = max(arrived, at)
        outputs = []
        for j, position in enumerate(positions):
            batch_dim = self.wiring.output_dims.get(position)
            pieces = [p[j] for p in parts]
            outputs.append(
                pieces[0] if batch_dim is None or len(pieces) == 1 else torch.cat(pieces, batch_dim)
            )
        return (outputs if self.config.keep_outputs else []), arrived

    def _result(self, released: list[float], done: list[tuple[list[Any], float]]) -> dict[str, Any]:
        scale = self.time_scale
        latency_s = [(at - rel) / scale for rel, (_, at) in zip(released, done)]
        span_s = (max(at for _, at in done) - released[0]) / scale if done else 0.0
        return {
            "outputs": [outputs for outputs, _ in done],
            "latency_s": latency_s,
            "span_s": span_s,
            "throughput_rps": len(done) / span_s if span_s > 0 else 0.0,
            "time_scale": scale,
        }

    def _progress(self, done: int, total: int) -> None:
        if self.config.progress_path:
            with open(self.config.progress_path, "w") as handle:
                handle.write(f"{done} {total}\n")

    def metrics(self) -> dict[str, Any]:
        stretch = self.transport.stretch
        return {
            "rank": self.me.rank,
            "stage": self.me.stage,
            "device": self.me.device,
            "items": self.items,
            "busy_s": stretch.busy_wall_s / self.time_scale,
            "overrun_s": stretch.overrun_wall_s / self.time_scale,
            # wall seconds of the stream; CPU seconds of the main thread (the stage's compute
            # is busy_cpu_s of it, the rest is the driver's own work) and of the whole process
            "stream_wall_s": self._stream_clocks[0],
            "stream_thread_cpu_s": self._stream_clocks[1],
            "stream_process_cpu_s": self._stream_clocks[2],
            "compute_cpu_s": stretch.busy_cpu_s,
            "warmup_cpu_item_s": self.warmup_cpu_item_s,
            "inflation": self.inflation,
            "predicted_item_s": self.device_item_s,
            "host_predicted_item_s": self.host_item_s,
            "host_measured_item_s": self.host_measured_item_s,
            "bytes_sent": self.transport.bytes_sent,
            "received": [
                {"src": src, "item": item, "tag": tag, "bytes": nbytes,
                 "seconds": (arrived - sent) / self.time_scale}
                for src, item, tag, nbytes, sent, arrived in self.transport.transfers
                if item >= self.first_measured_item
            ],
        }


def _inject(fault: dict[str, Any]) -> None:
    import os
    import signal

    if fault.get("kind") == "hang":
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)


def _sleep_to(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)
