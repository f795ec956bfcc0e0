"""Distributed runtime, rank: what one rank process does from start to end of a run.

``run_rank`` reads the plan folder once (``artifact.read_plan_folder``), loads its own stage
(only that stage's files, checked), takes the compiled schedule (relowered when the run asks
for another microbatch count), joins the process group and creates the groups every rank
creates in the same order: the control group (counts, metrics, barriers) and one group per
data-parallel stage (for the collectives of its members, such as a gradient all-reduce). Then
it hands over to the ``driver``: warm-up, emulation, the request stream or a session's rounds,
and the metrics rank 0 gathers and writes.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ...artifact.folder import load_stage_module
from ...artifact.manifest import PlanFolder, read_plan_folder
from ...errors import PlanFolderError
from ...ir.lowering import relower
from ..segments import SegmentProgram
from .config import STARTUP_TIMEOUT_S, RunConfig
from .driver import Driver
from .runner import StageRunner
from .transport import DistTransport
from .wiring import StageWiring

__all__ = ["run_rank", "data_parallel_groups"]


def run_rank(config: RunConfig, rank: int, world_size: int) -> dict[str, Any] | None:
    """Run one rank to the end; rank 0 returns the run's result (and writes it)."""
    torch.set_num_threads(config.threads)
    folder = read_plan_folder(config.plan_dir)
    wiring = StageWiring.from_folder(folder)
    _check_world(folder, wiring, world_size)
    _check_host(wiring, rank)
    me = wiring.table[rank]
    stage = load_stage_module(folder, me.stage)
    device = torch.device(config.device)
    module = stage.module.to(device).train(config.training)
    schedule = relower(folder.schedule, config.microbatches or folder.schedule.microbatches)
    # Ranks start at different times (imports, loading weights): rendezvous and collectives
    # get room for that; P2P waits use the run's timeout_s.
    startup = timedelta(seconds=max(config.timeout_s, STARTUP_TIMEOUT_S))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=startup)
    control = dist.new_group(backend="gloo", timeout=startup)
    groups = data_parallel_groups(wiring, startup)
    group = groups.get(me.stage)
    group_size = _check_group(group)
    transport = DistTransport(me, wiring, config.timeout_s, device, schedule.microbatches)
    transport.links.addresses = _host_addresses(control, world_size)
    transport.links.kernel_network = config.network == "kernel"
    runner = StageRunner(
        me.stage, schedule.stages[me.stage], schedule.pipelined, schedule.microbatches,
        SegmentProgram(module), transport, grad=config.grad,
    )  # fmt: skip
    driver = Driver(config, me, wiring, schedule, runner, control, group_size)
    result = driver.run(folder)  # on failure the process ends without a goodbye to peers
    transport.close()
    driver.resolve_late(result)  # outputs a testbed's rank 0 stood in for the sink of
    metrics: list[Any] = [None] * world_size if rank == 0 else []
    dist.gather_object(driver.metrics(), metrics if rank == 0 else None, dst=0, group=control)
    if rank == 0:
        assert result is not None
        result["ranks"] = metrics
        if config.result_path:
            torch.save(result, config.result_path)
    dist.barrier(group=control)
    return result


def data_parallel_groups(wiring: StageWiring, timeout: timedelta) -> dict[int, Any]:
    """A process group per data-parallel stage (stage -> group), created by every rank in
    stage order, as torch.distributed requires of ``new_group``."""
    groups = {}
    for stage in range(wiring.num_stages):
        ranks = [r.rank for r in wiring.ranks_of(stage)]
        if len(ranks) > 1:
            groups[stage] = dist.new_group(ranks=ranks, backend="gloo", timeout=timeout)
    return groups


def _check_group(group: Any) -> int:
    """The members of this rank's data-parallel group that answer a sum over it (1: none)."""
    if group is None:
        return 1
    ones = torch.ones(1)
    dist.all_reduce(ones, group=group)
    return int(ones.item())


def _check_world(folder: PlanFolder, wiring: StageWiring, world_size: int) -> None:
    table = wiring.table
    if world_size != len(table):
        raise PlanFolderError(
            f"{folder.path} holds a plan for {len(table)} ranks (one per device of every stage: "
            f"{[r.device for r in table]}), but {world_size} were started; start {len(table)}"
        )


DEVICE_ENV = "DORA_DEVICE"  # set on a host: the device it is, which its rank must run


def _check_host(wiring: StageWiring, rank: int) -> None:
    """A host that says which device it is (``DORA_DEVICE``) must be the one the plan puts
    this rank on: a node rank given to the wrong host would run on the wrong links."""
    here = os.environ.get(DEVICE_ENV)
    planned = wiring.table[rank].device
    if here and here != planned:
        hosts = ", ".join(f"rank {r.rank}: {r.device}" for r in wiring.table)
        raise PlanFolderError(
            f"rank {rank} is planned for device {planned!r} but was started on the host of "
            f"device {here!r} ({DEVICE_ENV}); start each host with the node rank of its device "
            f"({hosts})"
        )


def _host_addresses(control: Any, world_size: int) -> dict[int, str]:
    """Every rank's host address (the one it reaches rank 0's host from), so that an error
    about a lost peer can name the host too."""
    addresses: list[Any] = [None] * world_size
    dist.all_gather_object(addresses, _address(), group=control)
    return {rank: str(a) for rank, a in enumerate(addresses)}


def _address() -> str:
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((master, 9))  # no packet is sent: this picks the route's address
            return str(probe.getsockname()[0])
    except OSError:
        return socket.gethostname()
