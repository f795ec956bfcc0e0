"""``dora-fx``: plan, simulate and run from the command line.

    dora-fx plan --model gpt2 --scenario smart_home --latency-ms 1500 --out out/
    dora-fx simulate --model gpt2 --scenario smart_home --out sim/   # Gantt PNG + Chrome trace
    dora-fx run out/ --local --model gpt2 --batch 8                  # one process per device
    dora-fx train --model gpt2 --scenario smart_home --steps 3       # plan training, run steps
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .qoe_args import add_qoe_arguments, qoe_from_args

if TYPE_CHECKING:
    pass

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from ..models import MODELS
    from ..scenarios import SCENARIOS

    parser = argparse.ArgumentParser(
        prog="dora-fx",
        description="QoE-aware partitioning of a PyTorch model across edge devices.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan = commands.add_parser(
        "plan",
        help="partition a built-in model onto a scenario cluster, print the plan, write stages",
        description="Compile a built-in model (random weights, nothing downloaded) for a scenario "
        "cluster, print the plan table, write one stage_K.py per stage plus weights and "
        "plan.json to --out, and check that the saved plan computes what the model computes.",
    )
    plan.add_argument("--model", default="gpt2", choices=sorted(MODELS),
                      help="model to partition (default: gpt2)")
    plan.add_argument("--size", default="full", choices=["small", "full"],
                      help="'full' is the published configuration (GPT-2 small: 12 layers, 768 "
                      "wide; ResNet-50; MobileNetV2 1.0), 'small' a shrunken one for quick tries "
                      "(default: full)")
    plan.add_argument("--scenario", default="smart_home", choices=sorted(SCENARIOS),
                      help="cluster of devices and network to plan for (default: smart_home)")
    add_qoe_arguments(plan)
    plan.add_argument("--request-rate-rps", type=float, default=None,
                      help="offered load in requests per second; explain() then shows the "
                      "runtime adapter's mixture of plans for it (default: closed loop)")
    plan.add_argument("--batch", type=int, default=8,
                      help="request batch size to plan for (default: 8)")
    plan.add_argument("--num-stages", type=int, default=None,
                      help="pipeline stages (default: one per device of the scenario)")
    plan.add_argument("--out", default="out",
                      help="folder for stage_K.py, weights and plan.json (default: out)")
    plan.add_argument("--no-check", action="store_true",
                      help="skip loading the saved folder and comparing its output with the model's")
    plan.set_defaults(func=run_plan)
    from .run import add_run_parser
    from .simulate import add_simulate_parser
    from .train import add_train_parser

    add_simulate_parser(commands)
    add_run_parser(commands)
    add_train_parser(commands)
    return parser


def run_plan(args: argparse.Namespace) -> int:
    import torch

    from ..api import compile
    from ..models import build
    from ..runtime.loaded import load
    from ..scenarios import SCENARIOS

    started = time.perf_counter()
    print(f"building {args.model} ({args.size}) with random weights, batch {args.batch} ...", flush=True)
    model, inputs = build(args.model, args.size, batch=args.batch)
    qoe = qoe_from_args(args, args.batch, args.request_rate_rps)
    print(f"compiling for {args.scenario} ...", flush=True)
    compiled = compile(
        model, SCENARIOS[args.scenario](), qoe, example_inputs=inputs, num_stages=args.num_stages
    )
    print(compiled.explain())
    folder = compiled.save(args.out)
    print(f"wrote {len(compiled.stages)} stages to {folder}/ (stage_K.py, weights, plan.json)")
    if not args.no_check:
        with torch.no_grad():
            torch.testing.assert_close(load(folder)(*inputs), model(*inputs))
        print(f"check: {folder}/ loaded alone computes the model's output (assert_close passed)")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..errors import DoraError

    warnings.filterwarnings("ignore", module="transformers")
    try:
        return int(args.func(args))
    except DoraError as exc:
        print(f"dora-fx: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
