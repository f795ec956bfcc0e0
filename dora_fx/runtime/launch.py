"""Launching a distributed run: one process per device on this machine, or under torchrun.

``run_local(plan_dir, requests)`` starts one worker process per rank on 127.0.0.1 (each in its
own session, so the whole group can be killed), streams the requests through the pipeline and
returns a ``DistributedResult``. It never hangs: a rank that dies or hangs makes the others stop
within ``timeout_s`` (their P2P waits time out or see the connection close), and the launcher
kills what is left and raises ``RankFailedError`` naming the rank, its stage and its device.

Under torchrun (several hosts work the same as one)::

    torchrun --nnodes 1 --nproc-per-node 4 -m dora_fx.runtime.launch PLAN_DIR \
        --requests requests.pt --out result.pt

reads RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from the environment; rank 0 writes the
result. ``requests.pt`` is ``torch.save`` of a list of requests, each the flat list of user
inputs (``runtime.local.flatten_inputs``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..cost_models.device import Device
from ..errors import RankFailedError
from .distributed import RunConfig, rank_table, run_rank

__all__ = [
    "run_local",
    "DistributedResult",
    "free_port",
    "host_device",
    "spawn_ranks",
    "run_worker",
    "main",
]

_GRACE_S = 2.0  # (plus half the timeout) for other ranks to report after one fails


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

    @property
    def latency_p50_s(self) -> float:
        return _quantile(self.latency_s, 0.5)

    @property
    def latency_p95_s(self) -> float:
        return _quantile(self.latency_s, 0.95)

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


def check_requests(
    checks: tuple[list[Any], list[Any]], flat_requests: Iterable[tuple[int, list[Any]]]
) -> None:
    """Refuse, before any rank starts, a request whose inputs are not what the plan was
    compiled for (on a rank it would fail mid-run, in a reshape far from the cause).
    ``checks``: ``serialize.input_checks`` of the plan's manifest."""
    from ..errors import InputError
    from .local import check_input_tensors

    meta, shapes = checks
    for request_id, flat in flat_requests:
        try:
            check_input_tensors(flat, meta, shapes)
        except InputError as exc:
            raise InputError(f"request {request_id}: {exc}") from None


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
    import dora_fx

    calibrate = getattr(dora_fx, "calibrate", None)
    if calibrate is None:
        raise ValueError(
            "emulation scales compute from a calibrated host profile: pass host= (a Device or "
            "a profile JSON path), or emulate=False"
        )
    found = calibrate()
    return found if isinstance(found, Device) else Device.from_profile(found)


def run_local(
    plan_dir: str | Path,
    requests: Sequence[Any],
    *,
    microbatches: int | None = None,
    in_flight: int = 0,
    rate_rps: float | None = None,
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
    model is called. Every rank executes its stage's schedule from the plan folder, cutting
    each request into the schedule's microbatches; ``microbatches`` relowers that schedule for
    another count (the result's notes say so). ``emulate``: stretch compute to each device's
    predicted speed and shape transfers to the plan's network, paced by the schedule's
    contention policy (needs ``host``, the calibrated host).
    """
    from ..errors import InputError
    from ..serialize import _load_spec, _read_manifest, input_checks
    from .distributed_schedule import rank_schedule
    from .distributed_wiring import batch_rows
    from .local import flatten_inputs

    plan_dir = Path(plan_dir)
    manifest = _read_manifest(plan_dir)
    in_spec, out_spec = _load_spec(manifest["in_spec"]), _load_spec(manifest["out_spec"])
    flat_requests = [flatten_inputs(*_args_kwargs(r), in_spec) for r in requests]
    check_requests(input_checks(manifest), enumerate(flat_requests))
    compiled = rank_schedule(manifest).microbatches
    m = microbatches or compiled
    notes = [] if m == compiled else [
        f"note: ran the plan's schedule relowered for {m} microbatch(es); it was compiled for "
        f"{compiled}"
    ]  # fmt: skip
    short = [i for i, flat in enumerate(flat_requests) if 0 < batch_rows(flat) < m]
    if m > 1 and short:
        raise InputError(
            f"request {short[0]} has {batch_rows(flat_requests[short[0]])} rows, fewer than the "
            f"schedule's {m} microbatches; send at least {m} rows per request, or pass "
            "microbatches= a smaller count"
        )
    if port:
        _check_port(port)
    with tempfile.TemporaryDirectory(prefix="dora_run_") as run_dir:
        config = run_config(
            plan_dir, run_dir, microbatches=microbatches, in_flight=in_flight,
            rate_rps=rate_rps, warmup=warmup, timeout_s=timeout_s, emulate=emulate,
            time_scale=time_scale, host=host, compute_reference=compute_reference,
            threads=threads, keep_outputs=keep_outputs, fault=fault,
        )  # fmt: skip
        torch.save(flat_requests, config.requests_path)
        started = time.monotonic()
        _spawn_and_wait(config, manifest, run_dir, port or free_port(), progress)
        wall_s = time.monotonic() - started
        raw = torch.load(os.path.join(run_dir, "result.pt"), weights_only=True)
    return DistributedResult(
        outputs=[pytree.tree_unflatten(flat, out_spec) for flat in raw["outputs"] if flat],
        latency_s=raw["latency_s"],
        throughput_rps=raw["throughput_rps"],
        time_scale=raw["time_scale"],
        ranks=raw["ranks"],
        wall_s=wall_s,
        emulated=emulate,
        notes=notes,
        schedule=raw.get("schedule", ""),
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


def _args_kwargs(request: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(request, tuple) and len(request) == 2 and isinstance(request[1], dict):
        return tuple(request[0]), request[1]
    if isinstance(request, (tuple, list)):
        return tuple(request), {}
    return (request,), {}


def _spawn_and_wait(
    config: RunConfig,
    manifest: dict[str, Any],
    run_dir: str,
    port: int,
    progress: Callable[[int, int], None] | None,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> None:
    from ..ir import Plan

    spawn_ranks(
        "dora_fx.runtime.launch", config.to_json(), rank_table(Plan.from_json(manifest["plan"])),
        run_dir, port, progress, timeout_s=config.timeout_s, threads=config.threads,
        progress_path=config.progress_path, procs=procs,
    )  # fmt: skip


def spawn_ranks(
    worker_module: str,
    config: dict[str, Any],
    table: Sequence[Any],
    run_dir: str,
    port: int,
    progress: Callable[[int, int], None] | None = None,
    *,
    timeout_s: float,
    threads: int = 1,
    progress_path: str | None = None,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> None:
    """Start ``python -m worker_module --worker CONFIG`` once per rank of ``table`` (each entry
    has ``rank`` and ``describe()``) on 127.0.0.1 and wait for all; on a failure, stop every
    rank and raise ``RankFailedError`` naming the culprit (see ``run_local``). ``procs``: a
    list the started processes are added to (so another thread can stop them)."""
    config_path = os.path.join(run_dir, "config.json")
    Path(config_path).write_text(json.dumps(config))
    procs = [] if procs is None else procs
    try:
        for info in table:
            env = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "GLOO_SOCKET_IFNAME": "lo",
                "RANK": str(info.rank),
                "LOCAL_RANK": str(info.rank),
                "WORLD_SIZE": str(len(table)),
                "OMP_NUM_THREADS": str(threads),
                "DORA_PARENT_PID": str(os.getpid()),
            }
            cmd = [sys.executable, "-m", worker_module, "--worker", config_path]
            with open(os.path.join(run_dir, f"rank_{info.rank}.log"), "wb") as log:
                procs.append(
                    subprocess.Popen(
                        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        _wait(procs, list(table), run_dir, timeout_s, progress_path, progress)
    finally:
        kill_all(procs)


def _wait(
    procs: list[subprocess.Popen[bytes]],
    table: list[Any],
    run_dir: str,
    timeout_s: float,
    progress_path: str | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    first_failure: tuple[int, int, float] | None = None  # rank, return code, when
    shown: list[str] = []
    while True:
        codes = [p.poll() for p in procs]
        if first_failure is None:
            for rank, code in enumerate(codes):
                if code not in (None, 0):
                    first_failure = (rank, code, time.monotonic())
                    break
        if all(c is not None for c in codes):
            break
        # ranks waiting on the failed one time out at about the same time: give them half,
        # unless the first to fail is the culprit for sure (killed, or failed on its own)
        grace_s = 0.5 * timeout_s + _GRACE_S
        if first_failure is not None and (
            _culprit_known(first_failure[0], first_failure[1], run_dir)
            or time.monotonic() - first_failure[2] > grace_s
        ):
            break
        if progress is not None and progress_path and os.path.exists(progress_path):
            text = Path(progress_path).read_text().split()
            if len(text) == 2 and text != shown:
                shown = text
                progress(int(text[0]), int(text[1]))
        time.sleep(0.05)
    if first_failure is not None:
        kill_all(procs)
        raise _failure(first_failure[0], first_failure[1], table, run_dir)


def _culprit_known(rank: int, code: int, run_dir: str) -> bool:
    """The failed ``rank`` is the culprit without waiting for its peers' reports: a signal
    killed it, or its own report blames no peer."""
    if code < 0:
        return True
    path = Path(run_dir, f"failure_{rank}.json")
    if not path.exists():
        return False
    with contextlib.suppress(ValueError):
        return json.loads(path.read_text()).get("suspect_rank") is None
    return False


def _failure(rank: int, code: int, table: list[Any], run_dir: str) -> RankFailedError:
    reports = {}
    for info in table:
        path = Path(run_dir, f"failure_{info.rank}.json")
        if path.exists():
            reports[info.rank] = json.loads(path.read_text())
    # A rank that failed because a peer died or hung names that peer (``suspect_rank``);
    # follow those names to the rank that failed on its own, died, or hung.
    culprit, seen = rank, {rank}
    while culprit in reports and reports[culprit].get("suspect_rank") not in (None, *seen):
        culprit = reports[culprit]["suspect_rank"]
        seen.add(culprit)
    who = table[culprit].describe()
    if culprit in reports:
        message = f"{who} failed: {reports[culprit]['message']}"
    elif culprit == rank and code < 0:
        message = f"{who} died (killed by {signal.Signals(-code).name})"
    elif culprit == rank:
        message = f"{who} failed (exit code {code}): {_log_tail(run_dir, rank)}"
    else:
        witness = reports[rank]["message"] if rank in reports else ""
        message = f"{who} died or hung; {witness}"
    return RankFailedError(
        f"distributed run stopped: {message}. All ranks were stopped; run again with a larger "
        "timeout_s if that stage is legitimately slow"
    )


def _log_tail(run_dir: str, rank: int, lines: int = 5) -> str:
    path = Path(run_dir, f"rank_{rank}.log")
    if not path.exists():
        return "(no log)"
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop every process of ``procs`` (its process group): TERM, then KILL after 2 s."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- worker side -------------------------------------------------------------------------------


def die_with_parent() -> None:
    """Local workers end when the launcher does (Linux), so none is left behind."""
    parent = os.environ.get("DORA_PARENT_PID")
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):
        os._exit(1)


def _worker(config: RunConfig) -> int:
    return run_worker(lambda rank, world: run_rank(config, rank, world), config.result_path)


def run_worker(run: Callable[[int, int], Any], result_path: str | None) -> int:
    """Run one rank (``run(rank, world_size)`` from the environment) and exit the process: on
    an exception, write ``failure_RANK.json`` next to ``result_path`` for the launcher."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        run(rank, world)
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then exit
        traceback.print_exc()
        report = {
            "rank": rank,
            "message": str(exc),
            "type": type(exc).__name__,
            "suspect_rank": getattr(exc, "suspect_rank", None),
        }
        if result_path:
            Path(Path(result_path).parent, f"failure_{rank}.json").write_text(json.dumps(report))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip process-group teardown: peers may already be gone


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dora_fx.runtime.launch")
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
        return _worker(RunConfig.from_json(json.loads(Path(args.worker).read_text())))
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
    return _worker(config)


if __name__ == "__main__":
    sys.exit(main())
