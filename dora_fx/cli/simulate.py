"""``dora-fx simulate``: simulate a plan on a cluster and write its timeline.

    dora-fx simulate --scenario smart_home --model gpt2 --requests 200 --out sim_out/
    dora-fx simulate --model gpt2 --latency-ms 1500 --plan out/ --out sim_out/   # a saved plan
    dora-fx simulate --cluster my.json --problem blocks.json --plan plan.txt --rate 5 --out sim_out/

The plan simulated is the one dora_fx's planner chooses for the QoE options (as ``dora-fx
plan`` does), unless ``--plan`` names one (a plan file, or a folder ``dora-fx plan`` wrote) or
``--stages N`` asks for the FLOP-balanced split over N devices (a baseline).

Writes ``timeline.png`` (Gantt), ``trace.json`` (Chrome trace: open in https://ui.perfetto.dev)
and ``metrics.json`` (simulated and analytic figures), and prints both.

``cli.main`` wires it in with ``add_simulate_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..analysis.problem import Block, Problem
from ..cost_models.cluster import Cluster
from ..errors import PlanError
from ..ir.plan import Plan
from ..qoe import QoE
from ..sim.config import SimConfig
from ..sim.simulator import simulate
from .qoe_args import add_qoe_arguments, qoe_from_args

__all__ = ["add_simulate_parser", "run_simulate", "problem_to_json", "problem_from_json"]


def add_simulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a plan on a cluster: latency p50/p95, throughput, energy, timeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scenario",
        default="smart_home",
        help="built-in cluster: smart_home, traffic_analytics, edge_cluster (default smart_home)",
    )
    where.add_argument("--cluster", type=Path, help="cluster JSON file (Cluster.save)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--model", help="model zoo name (dora_fx.models: gpt2, mobilenetv2, mlp, ...), traced here"
    )
    what.add_argument(
        "--problem", type=Path, help="problem JSON: blocks with numeric costs (see problem_to_json)"
    )
    parser.add_argument(
        "--size",
        default="full",
        choices=("small", "full"),
        help="model zoo size: full (the published config; default, as 'dora-fx plan' and "
        "'dora-fx run') or small (a shrunken one, fast)",
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="request batch size for --model (default 8)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--plan",
        type=Path,
        help="plan file, text or JSON (Plan.to_text / Plan.dumps), or a folder written by "
        "'dora-fx plan' / CompiledModel.save (default: the planner's plan for the QoE options)",
    )
    which.add_argument(
        "--stages",
        type=int,
        help="simulate the FLOP-balanced split over this many devices instead of the planner's "
        "plan (a baseline)",
    )
    add_qoe_arguments(parser)
    parser.add_argument(
        "--requests", type=int, default=100, help="requests to simulate (default 100)"
    )
    parser.add_argument(
        "--rate", type=float, help="open-loop arrival rate in requests/s (default: closed loop)"
    )
    parser.add_argument(
        "--poisson", action="store_true", help="Poisson arrivals instead of periodic"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the Poisson stream (default 0)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests in flight in the closed loop (default 1)",
    )
    parser.add_argument(
        "--microbatches", type=int, default=1, help="microbatches per request (default 1)"
    )
    parser.add_argument(
        "--no-overlap",
        action="store_true",
        help="naive blocking sends: a device waits for its outputs to leave",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("sim_out"),
        help="folder for timeline.png, trace.json, metrics.json (default sim_out)",
    )
    parser.add_argument(
        "--gantt-requests",
        type=int,
        default=20,
        help="requests drawn in the Gantt chart (default 20)",
    )
    parser.set_defaults(func=run_simulate)
    return parser


def problem_to_json(problem: Problem) -> dict[str, Any]:
    """The numeric part of a problem (the cluster and QoE travel in their own files)."""
    return {
        "batch": problem.batch,
        "input_bytes": problem.input_bytes,
        "blocks": [
            {
                "name": b.name,
                "flops": b.flops,
                "dense_flops": b.dense,
                "bytes": b.bytes,
                "out_bytes": b.out_bytes,
                "param_bytes": b.param_bytes,
                "ops": b.ops,
            }
            for b in problem.blocks
        ],
    }


def problem_from_json(data: dict[str, Any], cluster: Cluster, qoe: QoE | None = None) -> Problem:
    try:
        blocks = tuple(Block(**b) for b in data["blocks"])
        batch = int(data.get("batch", 1))
    except (KeyError, TypeError) as exc:
        raise PlanError(
            f"problem JSON must hold 'blocks': a list of objects with flops, bytes, out_bytes "
            f"(and optionally dense_flops, param_bytes, ops, name): {exc}"
        ) from None
    return Problem(
        blocks, cluster, qoe or QoE(batch=batch), batch, float(data.get("input_bytes", 0.0))
    )


def _cluster(args: argparse.Namespace) -> Cluster:
    if args.cluster is not None:
        return Cluster.load(args.cluster)
    from ..scenarios import SCENARIOS

    if args.scenario not in SCENARIOS:
        raise PlanError(f"unknown scenario {args.scenario!r}; choose one of {sorted(SCENARIOS)}")
    return SCENARIOS[args.scenario]()


def _problem(args: argparse.Namespace, cluster: Cluster) -> Problem:
    if args.problem is not None:
        try:
            data = json.loads(args.problem.read_text())
            batch = int(data.get("batch", 1)) if isinstance(data, dict) else 1
            return problem_from_json(data, cluster, qoe_from_args(args, batch, args.rate))
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanError(f"cannot read problem file {args.problem}: {exc}") from None
    from ..compiler.pipeline import front_end
    from ..models import build

    model, example = build(args.model, size=args.size, batch=args.batch)
    chain = front_end(model.eval(), example).chain
    assert chain is not None
    blocks, input_bytes = chain.at(args.batch)
    qoe = qoe_from_args(args, args.batch, args.rate)
    return Problem(tuple(blocks), cluster, qoe, args.batch, input_bytes)


def _plan(args: argparse.Namespace, problem: Problem) -> Plan:
    if args.plan is not None:
        plan = _read_plan(args.plan)
        if plan.batch != problem.batch:
            print(f"note: plan '{plan.name}' was made for batch {plan.batch}; simulating "
                  f"batch {problem.batch} (--batch)", flush=True)
        return plan
    if args.stages is not None:
        from ..planner.balanced import balanced_flops_plan

        return balanced_flops_plan(problem, args.stages)
    from ..planner import solve

    plan_set = solve(problem)
    print(
        f"planned for {problem.qoe} in {plan_set.solve_s:.2f} s: '{plan_set.plans[0].name}' of "
        f"{len(plan_set.plans)} compliant plans",
        flush=True,
    )
    return plan_set.plans[0]


def _read_plan(path: Path) -> Plan:
    """A plan file (text or JSON), a saved folder's manifest, or the folder itself."""
    if path.is_dir():
        from ..artifact.manifest import read_plan_folder

        return read_plan_folder(path).plan
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"cannot read plan file {path}: {exc}") from None
    if not text.lstrip().startswith("{"):
        return Plan.from_text(text)
    try:
        data = json.loads(text)
        return Plan.from_json(data["plan"] if "format" in data and "plan" in data else data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"{path} is not a plan (Plan.dumps) or a saved plan.json: {exc}") from None


def run_simulate(args: argparse.Namespace) -> int:
    """Run the ``simulate`` subcommand; returns the exit status."""
    from ..analysis.evaluate import evaluate

    cluster = _cluster(args)
    problem = _problem(args, cluster)
    plan = _plan(args, problem)
    config = SimConfig(
        requests=args.requests,
        request_rate_rps=args.rate,
        arrivals="poisson" if args.poisson else "periodic",
        concurrency=args.concurrency,
        microbatches=args.microbatches,
        overlap=not args.no_overlap,
        seed=args.seed,
    )
    result = simulate(plan, problem, config)
    metrics = evaluate(
        plan,
        problem,
        microbatches=args.microbatches,
        request_rate_rps=args.rate,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    gantt = result.write_gantt_png(out / "timeline.png", args.gantt_requests)
    trace = result.write_chrome_trace(out / "trace.json")
    (out / "metrics.json").write_text(
        json.dumps(
            {"plan": plan.to_json(), "simulated": result.to_json(), "analytic": metrics.to_json()},
            indent=2,
        )
    )
    print(plan.to_text())
    print(result.summary())
    print(
        f"analytic: latency {metrics.latency_s * 1e3:.3f} ms (one request, idle cluster), capacity "
        f"{metrics.throughput_rps:.4g} req/s (bottleneck {metrics.bottleneck}), "
        f"energy {metrics.energy_j:.4g} J/request"
    )
    print(f"wrote {gantt}, {trace}, {out / 'metrics.json'}")
    return 0
