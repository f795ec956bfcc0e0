"""``dora-fx train``: plan a built-in model's training for a scenario cluster, print the plan
(stages, per-device training memory, iteration figures) and run a few training steps.

    dora-fx train --model gpt2 --scenario smart_home --batch 8 --steps 3

The task is the zoo model's (``dora_fx.training_tasks``: cross-entropy on class scores, or
mean-squared error for encoders without a head), on random targets; nothing is downloaded.
Steps run in this process (``compiled.train_step``), each checked against the same step of the
plain model, or with ``--distributed`` one process per device (emulated device time unless
``--no-emulation``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

__all__ = ["add_train_parser", "run_train"]


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..models import MODELS
    from ..scenarios import SCENARIOS
    from .qoe_args import add_qoe_arguments

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="plan a built-in model's training on a scenario cluster and run a few steps",
        description="Compile a built-in model (random weights) for training on a scenario "
        "cluster, print the plan and each device's training memory, then run --steps "
        "optimizer steps and compare them with plain single-process training.",
    )
    parser.add_argument("--model", default="gpt2", choices=sorted(MODELS))
    parser.add_argument("--size", default="small", choices=["small", "full"],
                        help="'small' (default) a shrunken config, 'full' the published one")
    parser.add_argument("--scenario", default="smart_home", choices=sorted(SCENARIOS))
    add_qoe_arguments(parser)
    parser.add_argument("--iteration-ms", type=float, default=None,
                        help="bound on the time of one training iteration in ms (default: none)")
    parser.add_argument("--batch", type=int, default=8, help="samples per iteration (default: 8)")
    parser.add_argument("--num-stages", type=int, default=None)
    parser.add_argument("--microbatches", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps to run (default: 3)")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--distributed", action="store_true",
                        help="run the steps one process per device on this machine")
    parser.add_argument("--no-emulation", action="store_true",
                        help="with --distributed: run at host speed")
    parser.set_defaults(func=run_train)
    return parser


def _optimizer(name: str, lr: float) -> Any:
    if name == "adamw":
        return lambda params: torch.optim.AdamW(params, lr=lr)
    return lambda params: torch.optim.SGD(params, lr=lr)


def run_train(args: argparse.Namespace) -> int:
    import copy
    import dataclasses

    from ..api import compile
    from ..models import build
    from ..scenarios import SCENARIOS
    from ..training_tasks import training_task, without_dropout
    from .qoe_args import qoe_from_args

    if args.steps < 1:
        raise SystemExit(f"dora-fx train: --steps must be >= 1, got {args.steps}")
    started = time.perf_counter()
    print(f"building {args.model} ({args.size}) with random weights, batch {args.batch} ...", flush=True)
    model, inputs = build(args.model, args.size, batch=args.batch)
    without_dropout(model).train()  # deterministic steps, comparable with the plain model's
    loss_fn, target = training_task(args.model, model, inputs)
    reference = copy.deepcopy(model).train()
    qoe = dataclasses.replace(qoe_from_args(args, args.batch, None), iteration_ms=args.iteration_ms)
    print(f"planning training for {args.scenario} ...", flush=True)
    compiled = compile(
        model, SCENARIOS[args.scenario](), qoe, example_inputs=inputs, mode="train",
        loss_fn=loss_fn, num_stages=args.num_stages, microbatches=args.microbatches,
        optimizer=args.optimizer,  # its state and step are what the plan budgets
    )  # fmt: skip
    print(compiled.explain())
    make_optimizer = _optimizer(args.optimizer, args.lr)
    if args.distributed:
        _train_distributed(compiled, inputs, target, args, make_optimizer)
    else:
        _train_here(compiled, reference, inputs, target, loss_fn, args.steps, make_optimizer)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _train_here(compiled: Any, reference: Any, inputs: Any, target: Any, loss_fn: Any,
                steps: int, make_optimizer: Any) -> None:
    ours, theirs = make_optimizer(compiled.parameters()), make_optimizer(reference.parameters())
    print(f"{'step':>4}  {'loss (dora_fx)':>15}  {'loss (plain)':>13}  rel. error")
    for step in range(steps):
        loss = compiled.train_step(*inputs, target=target)
        ours.step()
        ours.zero_grad()
        plain = loss_fn(reference(*inputs), target)
        plain.backward()
        theirs.step()
        theirs.zero_grad()
        ours_loss, plain_loss = float(loss.detach()), float(plain.detach())
        error = abs(ours_loss - plain_loss) / max(abs(plain_loss), 1e-12)
        print(f"{step:>4}  {ours_loss:>15.6f}  {plain_loss:>13.6f}  {error:.2e}")


def _train_distributed(compiled: Any, inputs: Any, target: Any, args: argparse.Namespace,
                       make_optimizer: Any) -> None:
    result = compiled.train_distributed(
        [(inputs, target)] * args.steps, steps=args.steps, optimizer=make_optimizer,
        emulate=not args.no_emulation,
    )  # fmt: skip
    planned = compiled.state.training
    clock = "emulated device" if result.emulated else "host"
    print(f"ran {len(result.steps)} steps, one process per device ({result.schedule.splitlines()[0]})")
    print(f"{'step':>4}  {'loss':>10}  {'iteration s (' + clock + ')':>28}")
    for step, loss, seconds in zip(result.steps, result.losses, result.iteration_s):
        print(f"{step:>4}  {loss:>10.6f}  {seconds:>28.4f}")
    if planned is not None:
        print(f"planned iteration {planned.iteration_s:.4f} s; measured mean "
              f"{result.iteration_s_mean:.4f} s (first step left out)")  # fmt: skip
