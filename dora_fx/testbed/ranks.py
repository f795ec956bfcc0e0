"""Distributed runs on a testbed: one torchrun node per rank, in the namespace of the device
the plan gives that rank.

The command is the one a real deployment runs on separate hosts, each host its node rank::

    GLOO_SOCKET_IFNAME=<its interface> torchrun --nnodes N --node-rank K --nproc-per-node 1 \
        --master-addr <rank 0's address> --master-port P \
        -m dora_fx.runtime.distributed.launch PLAN_DIR --requests requests.pt --out result.pt

Node rank ``k`` must run on ``rank_table(plan)[k].device``: the runtime takes its stage from
its rank and does not check which host it is on, so ``node_commands`` places each rank here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact.manifest import read_plan_folder
from ..runtime.distributed.rank import DEVICE_ENV
from ..runtime.distributed.wiring import rank_table
from .netns import NetnsCluster

__all__ = [
    "NodeCommand",
    "node_commands",
    "worker_commands",
    "torchrun_commands",
    "start_nodes",
    "wait_nodes",
    "stop_nodes",
]

MASTER_PORT = 29500


@dataclass(frozen=True)
class NodeCommand:
    """One torchrun node: its rank, the device (namespace) it runs on, argv and environment."""

    rank: int
    device: str
    argv: tuple[str, ...]
    env: dict[str, str]


def node_commands(
    testbed: NetnsCluster,
    plan_dir: str | Path,
    requests_path: str | Path,
    out_path: str | Path,
    *,
    port: int = MASTER_PORT,
    timeout_s: float = 60.0,
    python: str = sys.executable,
) -> list[NodeCommand]:
    """The torchrun command of every rank of the plan, each for its device's namespace; the
    ranks import the dora_fx this process imported (``PYTHONPATH``)."""
    table = rank_table(read_plan_folder(plan_dir).plan)
    launch = (
        "-m", "dora_fx.runtime.distributed.launch", str(Path(plan_dir).resolve()),
        "--requests", str(Path(requests_path).resolve()), "--out", str(Path(out_path).resolve()),
        "--timeout", f"{timeout_s:g}",
    )  # fmt: skip
    devices = [info.device for info in table]
    return torchrun_commands(
        testbed, devices, launch, port=port, timeout_s=timeout_s, python=python
    )


def worker_commands(
    testbed: NetnsCluster,
    devices: list[str],
    module: str,
    config_path: str | Path,
    *,
    port: int = MASTER_PORT,
    timeout_s: float = 60.0,
    python: str = sys.executable,
) -> list[NodeCommand]:
    """torchrun nodes of ``python -m module --worker CONFIG`` (a run the launcher prepared:
    ``runtime.distributed.launch`` with a ``RunConfig``, ``peers.pipelining_rank`` with a
    ``PeerConfig``), node rank ``k`` on ``devices[k]``."""
    tail = ("-m", module, "--worker", str(Path(config_path).resolve()))
    return torchrun_commands(testbed, devices, tail, port=port, timeout_s=timeout_s, python=python)


def torchrun_commands(
    testbed: NetnsCluster,
    devices: list[str],
    program: tuple[str, ...],
    *,
    port: int = MASTER_PORT,
    timeout_s: float = 60.0,
    python: str = sys.executable,
) -> list[NodeCommand]:
    """One torchrun node per device (node rank = position), each running ``program`` (torchrun's
    ``-m module args...``) in its device's namespace, rank 0's host the rendezvous master."""
    master = testbed.address(devices[0])
    commands = []
    for rank, device in enumerate(devices):
        torchrun = (
            python, "-m", "torch.distributed.run", "--nnodes", str(len(devices)),
            "--node-rank", str(rank), "--nproc-per-node", "1",
            "--master-addr", master, "--master-port", str(port),
            # a node that never joins ends the others after this long (default: 600 s)
            "--rdzv-conf", f"timeout={max(int(timeout_s), 10)}",
        )  # fmt: skip
        env = {**os.environ, "GLOO_SOCKET_IFNAME": testbed.interface(device),
               "PYTHONPATH": _pythonpath(), "OMP_NUM_THREADS": "1",
               DEVICE_ENV: device}  # the rank checks it runs the device planned  # fmt: skip
        env.pop("DORA_PARENT_PID", None)  # a torchrun worker's parent is its agent
        commands.append(NodeCommand(rank, device, torchrun + program, env))
    return commands


def _pythonpath() -> str:
    here = str(Path(__file__).resolve().parents[2])  # the folder holding this dora_fx
    rest = os.environ.get("PYTHONPATH")
    return here if not rest else f"{here}{os.pathsep}{rest}"


def start_nodes(
    testbed: NetnsCluster, commands: list[NodeCommand], log_dir: str | Path
) -> list[subprocess.Popen[Any]]:
    """Start every node in its namespace, output to ``log_dir/rank{k}.log``; on a failed start
    the ones started are stopped. Always ``stop_nodes`` them in a ``finally``."""
    procs: list[subprocess.Popen[Any]] = []
    try:
        for command in commands:
            with open(Path(log_dir) / f"rank{command.rank}.log", "wb") as log:
                procs.append(
                    testbed.popen(command.device, command.argv, env=command.env,
                                  stdout=log, stderr=subprocess.STDOUT)
                )  # fmt: skip
    except BaseException:
        stop_nodes(testbed, commands, procs)
        raise
    return procs


def wait_nodes(procs: list[subprocess.Popen[Any]], timeout_s: float) -> list[int | None]:
    """Exit status of every node, None for one still running after ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


def stop_nodes(
    testbed: NetnsCluster, commands: list[NodeCommand], procs: list[subprocess.Popen[Any]]
) -> None:
    """Kill every process in the nodes' namespaces (torchrun puts its worker in a session of
    its own, so a namespace, the node's host, is what holds them all) and reap the nodes."""
    for device in dict.fromkeys(command.device for command in commands):
        testbed.kill(device)
    for proc in procs:
        proc.kill()
        proc.wait()
