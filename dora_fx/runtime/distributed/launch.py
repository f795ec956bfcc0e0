"""Launching a distributed run: one process per device on this machine, or under torchrun.

``run_local(plan_dir, requests)`` starts one worker process per rank on 127.0.0.1 (each in its
own session, so the whole group can be killed), streams the requests through the pipeline and
returns a ``DistributedResult``. It never hangs: a rank that dies or hangs makes the others stop
within ``timeout_s`` (their P2P waits time out or see the connection close), and the launcher
kills what is left and raises ``DeviceLost`` naming the rank, its stage and its device.

Under torchrun (several hosts work the same as one)::

    torchrun --nnodes 1 --nproc-per-node 4 -m dora_fx.runtime.distributed.launch PLAN_DIR \
        --requests requests.pt --out result.pt

reads RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from the environment; rank 0 writes the
result. ``requests.pt`` is ``torch.save`` of a list of requests, each the flat list of user
inputs (``ir.call_spec.CallSpec.flatten``).

This module prepares a run and reads its result; ``supervisor`` starts, watches and stops the
rank processes, ``worker`` is each process's side.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...artifact.manifest import PlanFolder, read_plan_folder
from ...cost_models.device import Device
from ...errors import RankFailedError
from ...sim.result import SimResult
from ..inputs import check_requests, flatten_requests
from .answers import AnswerStream
from .config import RunConfig
from .report import ActionClass, action_report
from .supervisor import spawn_ranks
from .wiring import rank_table
from .worker import die_with_parent, run_worker, worker_main

__all__ = [
    "run_local",
    "DistributedResult",
    "free_port",
    "host_device",
    "spawn_ranks",
    "run_worker",
    "main",
]


@dataclass
class DistributedResult:
    """A distributed run: outputs per request (same pytree as the model's), latency and
    throughput in device seconds (emulated time when emulation was on), and per-rank figures."""

    outputs: list[Any]
    latency_s: list[float]
    throughput_rps: float
    time_scale: float
    ranks: list[dict[str, Any]]
    wall_s: float
    emulated: bool
    notes: list[str] = field(default_factory=list)
    schedule: str = ""  # the schedule the ranks executed (text form)
    request_ids: list[int] = field(default_factory=list)  # of ``outputs``, in order

    def by_id(self) -> dict[int, Any]:
        """Each request's outputs by its id (the positions when ``requests`` was a list)."""
        return dict(zip(self.request_ids, self.outputs, strict=True))

    @classmethod
    def from_raw(
        cls,
        raw: dict[str, Any],
        outputs: list[Any],
        wall_s: float,
        emulated: bool,
        notes: list[str],
    ) -> DistributedResult:
        """The result of a run from what its rank 0 wrote (``result.pt``: latency, throughput,
        time scale, per-rank figures and, for Dora's runtime, the schedule)."""
        return cls(
            outputs=outputs,
            latency_s=raw["latency_s"],
            throughput_rps=raw["throughput_rps"],
            time_scale=raw["time_scale"],
            ranks=raw["ranks"],
            wall_s=wall_s,
            emulated=emulated,
            notes=notes,
            schedule=raw.get("schedule", ""),
        )

    @property
    def latency_p50_s(self) -> float:
        return _quantile(self.latency_s, 0.5)

    @property
    def latency_p95_s(self) -> float:
        return _quantile(self.latency_s, 0.95)

    def action_report(self, simulated: SimResult) -> list[ActionClass]:
        """Measured vs ``simulated`` (the same plan, schedule and load, its timeline recorded)
        per action class: compute per stage, input, transfer and return (``report``)."""
        return action_report(self.ranks, simulated)

    def table(self) -> str:
        clock = "emulated device time" if self.emulated else "wall time"
        lines = [
            f"{len(self.latency_s)} requests, {clock} (time scale {self.time_scale:.3g}x, "
            f"{self.wall_s:.1f} s wall)",
            f"latency p50 {self.latency_p50_s * 1e3:.2f} ms   p95 {self.latency_p95_s * 1e3:.2f} ms   "
            f"throughput {self.throughput_rps:.2f} req/s",
            f"{'rank':>4} {'stage':>5} {'device':<14} {'items':>6} {'busy s':>9} {'util':>6} "
            f"{'pred ms/item':>12} {'MB sent':>8}",
        ]
        span = len(self.latency_s) / self.throughput_rps if self.throughput_rps else 0.0
        for r in self.ranks:
            util = r["busy_s"] / span if span else 0.0
            lines.append(
                f"{r['rank']:>4} {r['stage']:>5} {r['device']:<14} {r['items']:>6} "
                f"{r['busy_s']:>9.4f} {util:>6.1%} {r['predicted_item_s'] * 1e3:>12.3f} "
                f"{r['bytes_sent'] / 1e6:>8.2f}"
            )
        return "\n".join(lines + self.notes)


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise RankFailedError(
                f"the run could not start: port {port} on 127.0.0.1 is taken by another process; "
                "pass port=0 (the default) to pick a free one"
            ) from None


def host_device(host: Device | str | Path | None) -> Device:
    """The calibrated host the emulation scales from: a Device, a profile path, or None for
    ``dora_fx.calibrate()``."""
    if isinstance(host, Device):
        return host
    if host is not None:
        return Device.from_profile(host)
    from ...cost_models.calibrate import calibrate

    found = calibrate()
    return found if isinstance(found, Device) else Device.from_profile(found)


def run_local(
    plan_dir: str | Path,
    requests: Sequence[Any] | Mapping[int, Any],
    *,
    microbatches: int | None = None,
    in_flight: int = 0,
    rate_rps: float | None = None,
    arrivals_s: Sequence[float] | None = None,
    on_answer: Callable[[int, Any], None] | None = None,
    warmup: int = 3,
    emulate: bool = True,
    host: Device | str | Path | None = None,
    compute_reference: str = "measured",
    time_scale: float | None = None,
    timeout_s: float = 60.0,
    port: int = 0,
    threads: int = 1,
    keep_outputs: bool = True,
    progress: Callable[[int, int], None] | None = None,
    fault: dict[str, Any] | None = None,
) -> DistributedResult:
    """Run a saved plan with one process per device on 127.0.0.1.

    ``requests``: each a tuple of positional inputs, or an ``(args, kwargs)`` pair, as the
    model is called; a list (ids are the positions) or a mapping ``{request_id: request}``.
    Every rank executes its stage's schedule from the plan folder, cutting each request into
    the schedule's microbatches; ``microbatches`` relowers that schedule for another count
    (the result's notes say so). ``emulate``: stretch compute to each device's predicted speed
    and shape transfers to the plan's network, paced by the schedule's contention policy
    (needs ``host``, the calibrated host).

    Arrivals: closed loop of ``in_flight`` requests (default), open loop at ``rate_rps``, or
    at the times of ``arrivals_s`` (device seconds from the first request, one per request).
    ``on_answer(request_id, outputs)`` is called as each result comes back; if the run fails,
    the error's ``answered`` holds every result it gave, by request id (``answers``).
    """
    folder = read_plan_folder(plan_dir)
    items = list(requests.items()) if isinstance(requests, Mapping) else list(enumerate(requests))
    _check_arrivals(arrivals_s, len(items), rate_rps)
    flat_requests = flatten_requests(folder.call, items)
    compiled = folder.schedule.microbatches
    m = microbatches or compiled
    notes = [] if m == compiled else [
        f"note: ran the plan's schedule relowered for {m} microbatch(es); it was compiled for "
        f"{compiled}"
    ]  # fmt: skip
    check_requests(folder.call, flat_requests, m, ", or pass microbatches= a smaller count")
    if port:
        _check_port(port)
    with tempfile.TemporaryDirectory(prefix="dora_run_") as run_dir:
        # answers come back through the outbox, one file each as rank 0 collects it
        streamed = keep_outputs or on_answer is not None
        outbox = os.path.join(run_dir, "outbox") if streamed else None
        config = run_config(
            folder.path, run_dir, microbatches=microbatches, in_flight=in_flight,
            rate_rps=rate_rps, warmup=warmup, timeout_s=timeout_s, emulate=emulate,
            time_scale=time_scale, host=host, compute_reference=compute_reference,
            threads=threads, keep_outputs=False, fault=fault, outbox_dir=outbox,
            arrivals_s=None if arrivals_s is None else [float(t) for t in arrivals_s],
        )  # fmt: skip
        ids = [rid for rid, _ in flat_requests]
        answers = AnswerStream(folder.call, ids, outbox, on_answer)
        if outbox is not None:
            os.makedirs(outbox)
        torch.save([flat for _, flat in flat_requests], config.requests_path)
        started = time.monotonic()
        try:
            _spawn_and_wait(config, folder, run_dir, port or free_port(), _watch(progress, answers))
        except RankFailedError as exc:
            answers.poll()
            exc.answered = answers.answered
            raise
        answers.poll()
        wall_s = time.monotonic() - started
        raw = torch.load(os.path.join(run_dir, "result.pt"), weights_only=True)
    kept = ids if keep_outputs else []
    outputs = [answers.answered[rid] for rid in kept]
    result = DistributedResult.from_raw(raw, outputs, wall_s, emulate, notes)
    result.request_ids = kept
    return result


def _watch(
    progress: Callable[[int, int], None] | None, answers: AnswerStream
) -> Callable[[int, int], None] | None:
    """The supervisor's progress hook, also handing out the answers written so far."""
    if progress is None and answers.on_answer is None:
        return None

    def watch(done: int, total: int) -> None:
        answers.poll()
        if progress is not None:
            progress(done, total)

    return watch


def _check_arrivals(arrivals_s: Sequence[float] | None, count: int, rate: float | None) -> None:
    if arrivals_s is None:
        return
    if rate is not None:
        raise ValueError("give rate_rps or arrivals_s, not both: each sets when requests arrive")
    times = list(arrivals_s)
    if len(times) != count:
        raise ValueError(f"arrivals_s has {len(times)} times for {count} requests; give one each")
    for k, (a, b) in enumerate(zip([0.0, *times], times)):
        if not b >= a:
            raise ValueError(
                f"arrivals_s must be non-negative and non-decreasing; arrival {k} is {b!r} "
                f"after {a!r}"
            )


def run_config(
    plan_dir: str | Path,
    run_dir: str,
    *,
    emulate: bool = True,
    host: Device | str | Path | None = None,
    **options: Any,
) -> RunConfig:
    """The ``RunConfig`` of a run of ``plan_dir`` whose files live in ``run_dir``; ``options``
    are ``RunConfig`` fields (``run_local``'s keywords)."""
    return RunConfig(
        plan_dir=str(Path(plan_dir).resolve()),
        requests_path=os.path.join(run_dir, "requests.pt"),
        result_path=os.path.join(run_dir, "result.pt"),
        progress_path=os.path.join(run_dir, "progress"),
        ledger_path=os.path.join(run_dir, "ledger"),
        emulate=emulate,
        host=host_device(host).to_json() if emulate else None,
        **options,
    )


def _spawn_and_wait(
    config: RunConfig,
    folder: PlanFolder,
    run_dir: str,
    port: int,
    progress: Callable[[int, int], None] | None,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> None:
    spawn_ranks(
        "dora_fx.runtime.distributed.launch", config.to_json(), rank_table(folder.plan),
        run_dir, port, progress, timeout_s=config.timeout_s, threads=config.threads,
        progress_path=config.progress_path, procs=procs,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dora_fx.runtime.distributed.launch")
    parser.add_argument("--worker", metavar="CONFIG_JSON", help="(launcher internal)")
    parser.add_argument("plan_dir", nargs="?")
    parser.add_argument("--requests", help="torch.save'd list of flat input lists")
    parser.add_argument("--out", help="where rank 0 writes the result (torch.save)")
    parser.add_argument(
        "--microbatches", type=int, default=None, help="relower the plan's schedule for this many"
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--emulate", action="store_true", help="emulate devices (one host only)")
    parser.add_argument("--host-profile", help="calibrated host profile JSON (for --emulate)")
    args = parser.parse_args(argv)
    if args.worker:
        die_with_parent()
        return worker_main(RunConfig.from_json(json.loads(Path(args.worker).read_text())))
    if not args.plan_dir or not args.requests:
        parser.error("PLAN_DIR and --requests are required under torchrun")
    out = args.out or "dora_result.pt"
    config = RunConfig(
        plan_dir=args.plan_dir,
        requests_path=args.requests,
        result_path=out,
        microbatches=args.microbatches,
        timeout_s=args.timeout,
        emulate=args.emulate,
        host=host_device(args.host_profile).to_json() if args.emulate else None,
        ledger_path=os.path.join(
            tempfile.gettempdir(), f"dora_ledger_{os.environ.get('MASTER_PORT', '0')}"
        ),
    )
    return worker_main(config)


if __name__ == "__main__":
    sys.exit(main())
