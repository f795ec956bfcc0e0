"""Distributed runtime, driver: what a rank does with its stage once it is set up (``rank``):

1. warms up: runs ``warmup`` requests unmeasured and not emulated, recording the stage's ops
   (``cost_recorder.CostRecorder``) and its CPU time per item (one microbatch of one request);
2. starts emulation (when asked; ``emulation``): the dilation every rank agrees on
   (``time_scale``), the compute stretch of this device and the link shaper on the
   shared-medium ledger, paced by the schedule's contention policy;
3. streams the measured requests: rank 0 releases them (closed loop of ``in_flight``, or open
   loop at ``rate_rps``), cuts each into the schedule's microbatches, scatters the inputs, runs
   its own stage's actions and collects the outputs; every other rank executes its stage's
   actions once per request (``runner.StageRunner``); a session serves its inbox in rounds;
4. reports its metrics (with the trace of executed actions), which rank 0 gathers.

Faults injected on purpose (``RunConfig.fault``) exercise the failure path; tensors move
through ``transport.DistTransport``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ...artifact.manifest import PlanFolder
from ...ir.batch_split import batch_rows, split_sizes
from ...ir.schedule import Schedule
from ..compute_emulation import ComputeStretch, CpuSamples
from .config import RunConfig
from .emulation import start_emulation
from .inbox import write_answer
from .runner import StageRunner
from .transport import LateOutput
from .wiring import RankInfo, StageWiring

__all__ = ["Driver"]


class Driver:
    def __init__(
        self,
        config: RunConfig,
        me: RankInfo,
        wiring: StageWiring,
        schedule: Schedule,
        runner: StageRunner,
        control: Any,
        group_size: int = 1,
    ) -> None:
        self.config, self.me, self.wiring, self.schedule = config, me, wiring, schedule
        self.group_size = group_size  # members of this rank's data-parallel group that answered
        self.m = schedule.microbatches
        self.runner, self.transport, self.control = runner, runner.transport, control
        runner.on_item_done = self._item_done
        self.time_scale = 1.0
        self.items = 0
        self.first_request = 0  # the first measured request
        self.device_item_s = self.host_item_s = self.host_measured_item_s = 0.0
        self._cpu_samples = CpuSamples()  # the recent ones: a session runs for long
        self._device_wall_s: float | None = None  # emulated wall seconds of one item
        self._ledger: Any = None
        self._clocks = self._stream_clocks = (0.0, 0.0, 0.0)
        self.warmup_cpu_item_s, self.inflation = 0.0, 1.0
        self._stream_start = 0  # index of the stream's first CPU sample
        self._fault_offset = 0  # requests streamed in earlier rounds (sessions)
        self._answer: Any = None  # rank 0 of a session: (request index, outputs) -> None
        self._late: list[tuple[int, list[list[Any]]]] = []  # requests answered after the run
        self._stream_first = 0  # the request index the last stream started at
        self._stream_t0 = 0.0

    def run(self, folder: PlanFolder) -> dict[str, Any] | None:
        config = self.config
        requests: list[list[Any]] = []
        if self.me.rank == 0:
            requests = torch.load(config.requests_path, weights_only=True)
        counts = [len(requests), min(config.warmup, len(requests))]
        dist.broadcast_object_list(counts, src=0, group=self.control)
        total, warmup = counts
        # Phase 1: warm up and count the stage's operations (no emulation, not measured).
        ops = self._serve(requests[:warmup], warmup)
        self._start_emulation(folder, ops)
        dist.barrier(group=self.control)
        # Phase 2: the measured stream.
        self.runner.stretch = ComputeStretch(self.runner.stretch.factor)
        self.items, self.first_request = 0, warmup
        self.runner.rows = 0
        self._stream_start = len(self._cpu_samples)
        if config.inbox_dir:
            return self._session(warmup)
        if self.me.rank == 0 and config.outbox_dir:
            outbox = config.outbox_dir
            self._answer = lambda r, outputs: write_answer(outbox, r - warmup, outputs)
        return self._stream(requests, range(warmup, warmup + total))

    def _session(self, first: int) -> dict[str, Any] | None:
        """Serve the inbox in rounds until the launcher ends the session (``runtime.session``):
        rank 0 announces each round's size, then every rank runs it as one stream."""
        from .inbox import Inbox

        assert self.config.inbox_dir is not None
        inbox = Inbox(self.config.inbox_dir) if self.me.rank == 0 else None
        outbox = str(Path(self.config.inbox_dir).parent / "outbox")
        ids: dict[int, int] = {}  # request index -> request id, until answered
        if self.me.rank == 0:
            self._answer = lambda r, outputs: write_answer(outbox, ids.pop(r), outputs)
        latency_s: list[float] = []
        start = first
        while True:
            taken = inbox.take() if inbox is not None else []
            count = [-1 if taken is None else len(taken)]
            dist.broadcast_object_list(count, src=0, group=self.control)
            if count[0] < 0:
                break
            if count[0] == 0:
                continue
            ids.update({start + k: rid for k, (rid, _) in enumerate(taken or [])})
            result = self._stream([flat for _, flat in taken or []], range(start, start + count[0]))
            self._fault_offset += count[0]
            start += count[0]
            if result is not None:
                latency_s += result["latency_s"]
        if self.me.rank != 0:
            return None
        return {"outputs": [], "latency_s": latency_s, "span_s": 0.0, "throughput_rps": 0.0,
                "time_scale": self.time_scale, "schedule": self.schedule.to_text()}  # fmt: skip

    def _serve(self, requests: list[list[Any]], count: int) -> list[Any]:
        """Warm-up: every rank runs its actions for ``count`` requests, rank 0 feeding them
        one after another; the first item's operations are recorded."""
        self.runner.record_item = 0 if count else None
        cpu_after_first = time.process_time()
        for r in range(count):
            if r == 1:
                cpu_after_first = time.process_time()  # the recorded first request is slower
            if self.me.rank == 0:
                self._scatter(requests[r], r)
            self._run_request(r)
        self.runner.flush()
        if self.me.rank == 0:
            for r in range(count):
                self._collect(r, serving=False)
        self.runner.record_item = None
        # process CPU (every thread) per item, and how much longer compute took in wall time
        measured_items = (count - 1) * self.m if count > 1 else max(count * self.m, 1)
        self.warmup_cpu_item_s = (time.process_time() - cpu_after_first) / measured_items
        stretch = self.runner.stretch
        self.inflation = stretch.busy_wall_s / stretch.busy_cpu_s if stretch.busy_cpu_s else 1.0
        # CPU seconds per item (the recorded, slower first item aside when there are others)
        self.host_measured_item_s = self._cpu_samples.reference_s() or stretch.busy_cpu_s
        return list(self.runner.recorded)

    def _item_done(self, item: int, cpu_s: float) -> None:
        self.items += 1
        if item != self.runner.record_item:
            self._cpu_samples.append(cpu_s)
            self._rescale()

    def _rescale(self) -> None:
        """Measured reference: the mean CPU time per item of the recent items (the warm-up's
        and the stream's; ``compute_emulation.measured_reference_s``), from a bounded window."""
        if self.config.compute_reference != "measured" or self._device_wall_s is None:
            return
        reference = self._cpu_samples.reference_s(self._stream_start)
        if reference > 0:
            self.runner.stretch.factor = self._device_wall_s / reference

    def _run_request(self, r: int) -> None:
        """Run this rank's actions for request ``r``. A rank other than 0 is then done with
        its items (the SENTs deferred to the next request need no batch); rank 0 forgets them
        once it collected their outputs (``_collect``)."""
        self.runner.run_request(r)
        if self.me.rank != 0:
            for item in range(r * self.m, (r + 1) * self.m):
                self.transport.forget(item)

    def _scatter(self, request: list[Any], r: int) -> None:
        """Rank 0: the user inputs of every microbatch of request ``r`` to the stages."""
        for k in range(self.m):
            self.transport.scatter_inputs(r * self.m + k, self._microbatch(request, k))

    def _microbatch(self, request: list[Any], part: int) -> list[Any]:
        m = self.m
        rows = batch_rows(request)
        if m == 1 or not rows:
            return request
        if rows < m:
            raise ValueError(
                f"a request of {rows} rows cannot be cut into the schedule's {m} microbatches; "
                "send requests of at least that many rows"
            )
        sizes = split_sizes(rows, [1.0] * m)
        start, size = sum(sizes[:part]), sizes[part]
        return [
            v.narrow(0, start, size)
            if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows
            else v
            for v in request
        ]

    def _start_emulation(self, folder: PlanFolder, ops: list[Any]) -> None:
        if not self.config.emulate:
            return
        emulation = start_emulation(
            self.config, folder.cluster, self.me, self.wiring, self.schedule.contention, ops,
            self.host_measured_item_s, self.warmup_cpu_item_s, self.inflation, self.control,
        )  # fmt: skip
        self.time_scale = emulation.time_scale
        self.device_item_s, self.host_item_s = emulation.device_item_s, emulation.host_item_s
        self._device_wall_s = emulation.device_wall_s
        self.runner.stretch = ComputeStretch(emulation.stretch_factor)
        self._ledger = emulation.ledger
        self.transport.shaper = emulation.shaper

    def _stream(self, requests: list[list[Any]], indices: range) -> dict[str, Any] | None:
        self._clocks = (time.monotonic(), time.thread_time(), time.process_time())
        self._stream_t0 = self._clocks[0]
        try:
            return self._stream_requests(requests, indices)
        finally:
            wall, thread_cpu, process_cpu = self._clocks
            self._stream_clocks = (
                time.monotonic() - wall,
                time.thread_time() - thread_cpu,
                time.process_time() - process_cpu,
            )

    def _fault_at(self, k: int) -> None:
        """Inject the configured fault before the ``k``-th request of the stream if it holds
        the faulty item."""
        fault = self.config.fault or {}
        k += self._fault_offset
        if (
            fault.get("rank") == self.me.rank
            and k * self.m <= fault.get("item", -1) < (k + 1) * self.m
        ):
            _inject(fault)

    def _stream_requests(self, requests: list[list[Any]], indices: range) -> dict[str, Any] | None:
        if self.me.rank != 0:
            for k, r in enumerate(indices):
                self._fault_at(k)
                self._run_request(r)
            self.runner.flush()
            return None
        self._stream_first = indices.start
        window = self.config.in_flight or len(self.wiring.table)
        open_loop = self.config.rate_rps is not None or self.config.arrivals_s is not None
        released: list[float] = []
        done: list[tuple[list[Any], float]] = []
        start = time.monotonic()
        for k, request in enumerate(requests):
            while k - len(done) >= window and not open_loop:
                done.append(self._collect(indices.start + len(done)))
                self._progress(len(done), len(requests))
            # A request is issued when its client sends it: at its time in the open loop, or
            # when the request ``window`` before it returned (closed loop), not when rank 0
            # gets round to it; time it waits for rank 0's stage is latency, as in the sim.
            if open_loop:
                issued = start + self._arrival_s(k) * self.time_scale
                _sleep_to(issued)
            else:
                issued = done[k - window][1] if k >= window else start
            released.append(issued)
            self._fault_at(k)
            self._scatter(request, indices.start + k)
            self._run_request(indices.start + k)
        self.runner.flush()
        while len(done) < len(requests):
            done.append(self._collect(indices.start + len(done)))
            self._progress(len(done), len(requests))
        return self._result(released, done)

    def _arrival_s(self, k: int) -> float:
        """Device seconds from the stream's start at which the ``k``-th request arrives in the
        open loop: from the trace, else every ``1 / rate_rps``."""
        if self.config.arrivals_s is not None:
            return float(self.config.arrivals_s[k])
        assert self.config.rate_rps is not None
        return k / self.config.rate_rps

    def _collect(self, request: int, serving: bool = True) -> tuple[list[Any], float]:
        """Rank 0: a request's outputs and when their last piece arrived; outputs whose payloads
        come late (``links``) are answered by ``resolve_late``. ``serving`` False: warm-up."""
        positions = sorted(self.wiring.output_dims)
        parts, arrived = [], 0.0
        for item in range(request * self.m, (request + 1) * self.m):
            values, at = self.transport.collect_outputs(item, positions)
            self.transport.forget(item)  # its stage ran before (``_run_request``)
            parts.append(values)
            arrived = max(arrived, at)
        if any(isinstance(v, LateOutput) for values in parts for v in values):
            self._late += [(request, parts)] if serving else []
            return [], arrived
        return self._answer_with(request, parts), arrived

    def _answer_with(self, request: int, parts: list[list[Any]]) -> list[Any]:
        """The request's outputs from its microbatches' ``parts``, answered."""
        dims = [self.wiring.output_dims.get(p) for p in sorted(self.wiring.output_dims)]
        outputs = [
            part[0] if dim is None or len(part) == 1 else torch.cat(part, dim)
            for dim, part in zip(dims, ([p[j] for p in parts] for j in range(len(dims))))
        ]
        if self._answer is not None:
            self._answer(request, outputs)
        return outputs if self.config.keep_outputs else []

    def resolve_late(self, result: dict[str, Any] | None) -> None:
        """After the transport closed: answer the requests whose outputs came late, in order,
        their outputs into rank 0's ``result``."""
        for request, parts in self._late:
            outputs = self._answer_with(request, [list(map(self.transport.resolve_late, v)) for v in parts])
            if result is not None and 0 <= request - self._stream_first < len(result["outputs"]):
                result["outputs"][request - self._stream_first] = outputs
        self._late = []

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
            "schedule": self.schedule.to_text(),
        }

    def _progress(self, done: int, total: int) -> None:
        if self.config.progress_path:
            with open(self.config.progress_path, "w") as handle:
                handle.write(f"{done} {total}\n")

    def metrics(self) -> dict[str, Any]:
        stretch, scale, t0 = self.runner.stretch, self.time_scale, self._stream_t0
        shaper = self.transport.shaper
        first_item = self.first_request * self.m
        return {
            "rank": self.me.rank,
            "stage": self.me.stage,
            "device": self.me.device,
            "items": self.items,
            "rows": self.runner.rows,  # rows of the measured stream this rank computed
            "group_size": self.group_size,  # its data-parallel group's process group, checked
            "busy_s": stretch.busy_wall_s / scale,
            "overrun_s": stretch.overrun_wall_s / scale,
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
            "items_open": len(self.transport.batch),  # items the transport still holds
            "microbatches": self.m,
            "contention": self.schedule.contention,
            # seconds chunks were held back for more critical flows (critical-first pacing)
            "held_s": (shaper.held_s / scale) if shaper is not None else 0.0,
            # every executed action: request, action, start and end in device seconds from
            # the stream's start (the warm-up's are negative)
            "trace": [
                (r, text, (a - t0) / scale, (b - t0) / scale) for r, text, a, b in self.runner.trace
            ],
            "received": [
                {
                    "src": src,
                    "item": item,
                    "tag": tag,
                    "bytes": nbytes,
                    "seconds": (arrived - sent) / scale,
                    "sent_s": (sent - t0) / scale,  # device seconds from the stream's start
                    "arrived_s": (arrived - t0) / scale,
                }
                for src, item, tag, nbytes, sent, arrived in self.transport.transfers
                if item >= first_item
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
