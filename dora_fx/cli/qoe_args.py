"""``dora-fx``: plan, simulate and run from the command line.

    dora-fx plan --model gpt2 --scenario smart_home --latency-ms 1500 --out out/
    dora-fx simulate --model gpt2 --scenario smart_home --out sim/   # Gantt PNG + Chrome trace
    dora-fx run out/ --local --model gpt2 --batch 8                  # one process per device
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..qoe import QoE

__all__ = ["add_qoe_arguments", "qoe_from_args"]


def add_qoe_arguments(parser: argparse.ArgumentParser) -> None:
    """The QoE options ``plan`` and ``simulate`` share (``qoe_from_args`` reads them)."""
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="latency SLO per request in milliseconds (default: none)")
    parser.add_argument("--throughput-rps", type=float, default=None,
                        help="throughput floor in requests per second (default: none)")
    parser.add_argument("--energy-j", type=float, default=None,
                        help="energy budget per request in joules (default: none)")
    parser.add_argument("--objective", default="latency",
                        choices=["latency", "throughput", "energy"],
                        help="what to optimize once the QoE holds (default: latency)")
    parser.add_argument("--source", default=None,
                        help="device the requests come from (default: the scenario's source, "
                             "e.g. the phone of smart_home)")
    parser.add_argument("--sink", default=None,
                        help="device the results must reach (default: the source)")


def qoe_from_args(args: argparse.Namespace, batch: int, request_rate_rps: float | None) -> QoE:
    from ..qoe import QoE

    return QoE(
        latency_ms=args.latency_ms, throughput_rps=args.throughput_rps, energy_j=args.energy_j,
        objective=args.objective, batch=batch, request_rate_rps=request_rate_rps,
        source=args.source, sink=args.sink,
    )
