"""``dora-fx run PLAN_DIR --local``: stream requests through a saved plan, one process per
device on this machine, emulated by default; print latency p50/p95, throughput and per-rank
busy time.

Requests repeat one example input: ``--inputs FILE`` (``torch.save`` of the tuple of positional
inputs) or ``--model NAME --batch B`` (an input from the model zoo, ``dora_fx.models``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ..errors import DoraError

__all__ = ["add_run_parser", "run_command"]


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run a saved plan for real, one process per device"
    )
    parser.add_argument("plan_dir", help="folder written by compiled.save()")
    parser.add_argument("--local", action="store_true", help="all ranks on 127.0.0.1")
    parser.add_argument("--inputs", help="torch.save'd tuple of example inputs")
    parser.add_argument("--model", help="take the example input from this zoo model")
    parser.add_argument("--batch", type=int, default=4, help="batch of the zoo input")
    parser.add_argument(
        "--size", default="full", choices=("small", "full"),
        help="zoo model size the plan was made for (default: full, as 'dora-fx plan')",
    )  # fmt: skip
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument(
        "--microbatches", type=int, default=None,
        help="relower the plan's schedule for this many (default: the compiled count)",
    )  # fmt: skip
    parser.add_argument("--in-flight", type=int, default=0, help="closed loop (0: one per rank)")
    parser.add_argument("--rate", type=float, help="open loop at this many requests/s instead")
    parser.add_argument("--no-emulation", action="store_true", help="run at host speed")
    parser.add_argument("--host-profile", help="calibrated host profile (default: calibrate now)")
    parser.add_argument("--time-scale", type=float, help="wall seconds per emulated second")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a rank may stall")
    parser.add_argument("--port", type=int, default=0, help="rendezvous port (0: a free one)")
    parser.set_defaults(func=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    from ..runtime.distributed.launch import run_local

    if not args.local:
        print(
            "dora-fx run: only --local is handled here; on several hosts start each rank with "
            "torchrun -m dora_fx.runtime.distributed.launch PLAN_DIR --requests FILE",
            file=sys.stderr,
        )
        return 2
    try:
        example = _example(args)
        host = None
        if not args.no_emulation:
            host = args.host_profile or _calibrated_host()
        result = run_local(
            args.plan_dir,
            [example] * args.requests,
            microbatches=args.microbatches,
            in_flight=args.in_flight,
            rate_rps=args.rate,
            emulate=not args.no_emulation,
            host=host,
            time_scale=args.time_scale,
            timeout_s=args.timeout,
            port=args.port,
            keep_outputs=False,
            progress=_progress_bar(args.requests),
        )
    except (DoraError, ValueError, OSError) as exc:
        print(f"dora-fx run: {exc}", file=sys.stderr)
        return 1
    print(result.table())
    return 0


def _example(args: argparse.Namespace) -> tuple[Any, ...]:
    if args.inputs:
        loaded = torch.load(args.inputs, weights_only=True)
        return tuple(loaded) if isinstance(loaded, (tuple, list)) else (loaded,)
    if args.model:
        from .. import models

        return tuple(models.build(args.model, size=args.size, batch=args.batch)[1])
    raise ValueError(
        "say what to send: --inputs FILE (torch.save of the input tuple) or --model NAME "
        "--batch B for an input from the model zoo"
    )


def _calibrated_host() -> Any:
    from ..cost_models.calibrate import calibrate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each rank runs one thread: measure the host the same way
    try:
        return calibrate(quick=True)
    finally:
        torch.set_num_threads(threads)


def _progress_bar(total: int) -> Any:
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(console=Console(stderr=True), transient=True)
    task = progress.add_task("requests", total=total)
    progress.start()

    def update(done: int, _total: int) -> None:
        progress.update(task, completed=done)
        if done >= total:
            progress.stop()

    return update
