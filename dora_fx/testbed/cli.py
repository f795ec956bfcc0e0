"""``python -m dora_fx.testbed up|down|status``: bring a cluster's namespaces up, tear them
down, show them. The testbed outlives ``up`` (a state file under /run records its layout), so
ranks can then be started in it by hand (README, "Multi-host")."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..cost_models.cluster import Cluster
from ..errors import DoraError
from ..scenarios import SCENARIOS
from .commands import namespaces_of, read_state, teardown
from .layout import TestbedError
from .netns import NetnsCluster, describe

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            removed = teardown(args.prefix)
            print(f"removed {', '.join(removed)}" if removed else f"no testbed {args.prefix!r}")
            return 0
        return _status(args.prefix)
    except DoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dora_fx.testbed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="make a namespace per device and shape the links")
    source = up.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenario", choices=sorted(SCENARIOS), help="a built-in cluster")
    source.add_argument("--cluster", metavar="JSON", help="a cluster file (Cluster.save)")
    for command in (up, commands.add_parser("down", help="remove a testbed, processes and all"),
                    commands.add_parser("status", help="show a testbed")):  # fmt: skip
        command.add_argument("--prefix", default="dora", help="starts every name (default dora)")
    return parser


def _up(args: argparse.Namespace) -> int:
    cluster = SCENARIOS[args.scenario]() if args.scenario else Cluster.load(args.cluster)
    testbed = NetnsCluster(cluster, args.prefix).up()
    print("\n".join(testbed.describe()))
    print(f"tear down with: python -m dora_fx.testbed down --prefix {args.prefix}")
    return 0


def _status(prefix: str) -> int:
    layout, present = read_state(prefix), set(namespaces_of(prefix))
    if layout is None:
        if not present:
            print(f"no testbed {prefix!r}")
            return 1
        raise TestbedError(
            f"namespaces {sorted(present)} exist but their testbed's state is gone; remove them "
            f"with `python -m dora_fx.testbed down --prefix {prefix}`"
        )
    print("\n".join(describe(layout)))
    missing = [ns for ns in layout.namespaces if ns not in present]
    if missing:
        print(f"missing namespaces (bring it down and up again): {', '.join(missing)}")
        return 1
    return 0
