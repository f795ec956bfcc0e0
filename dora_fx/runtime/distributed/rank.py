"""Distributed runtime, driver: what one rank does from start to end of a run.

``run_rank`` joins the process group, loads the rank's stage and its schedule from the plan
folder (``distributed_schedule.rank_schedule``: the microbatch count is the schedule's) and
hands them to a ``Driver``, which

1. warms up: runs ``warmup`` requests unmeasured and not emulated, recording the stage's ops
   (``cost_recorder.CostRecorder``) and its CPU time per item (one microbatch of one request);
2. starts emulation (when asked): the dilation every rank agrees on (``time_scale``), the
   compute stretch of this device and the link shaper on the shared-medium ledger, paced by
   the schedule's contention policy;
3. streams the measured requests: rank 0 releases them (closed loop of ``in_flight``, or open
   loop at ``rate_rps``), cuts each into the schedule's microbatches, scatters the inputs, runs
   its own stage's actions and collects the outputs; every other rank executes its stage's
   actions once per request (``distributed_schedule.StageRunner``);
4. reports: rank 0 gathers every rank's metrics (with the trace of executed actions) and
   writes the result.

Faults injected on purpose (``RunConfig.fault``) exercise the failure path; tensors move
through ``distributed_transport.DistTransport``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ...ir.plan import Plan
from ..segments import segment_program
from .config import STARTUP_TIMEOUT_S, RunConfig
from .driver import Driver
from .runner import StageRunner, rank_schedule
from .transport import DistTransport
from .wiring import StageWiring, rank_table

__all__ = ["RunConfig", "run_rank", "STARTUP_TIMEOUT_S"]


def run_rank(config: RunConfig, rank: int, world_size: int) -> dict[str, Any] | None:
    """Run one rank to the end; rank 0 returns the run's result (and writes it)."""
    from ...artifact.folder import load_stage  # serialize imports runtime.local; keep import lazy

    torch.set_num_threads(config.threads)
    stage, manifest = load_stage(config.plan_dir, _stage_of(config.plan_dir, rank, world_size))
    wiring = StageWiring.from_manifest(manifest)
    me = wiring.table[rank]
    device = torch.device(config.device)
    module = stage.module.to(device)
    schedule = rank_schedule(manifest, config.microbatches)
    program = segment_program(module, stage.code)
    # Ranks start at different times (imports, loading weights): rendezvous and collectives
    # get room for that; P2P waits use the run's timeout_s.
    startup = timedelta(seconds=max(config.timeout_s, STARTUP_TIMEOUT_S))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=startup)
    control = dist.new_group(backend="gloo", timeout=startup)
    transport = DistTransport(me, wiring, config.timeout_s, device, schedule.microbatches)
    runner = StageRunner(
        me.stage, schedule.stages[me.stage], schedule.pipelined, schedule.microbatches, program,
        transport,
    )  # fmt: skip
    driver = Driver(config, me, wiring, schedule, runner, control)
    result = driver.run(manifest)  # on failure the process ends without a goodbye to peers
    transport.close()
    metrics: list[Any] = [None] * world_size if rank == 0 else []
    dist.gather_object(driver.metrics(), metrics if rank == 0 else None, dst=0, group=control)
    if rank == 0:
        assert result is not None
        result["ranks"] = metrics
        if config.result_path:
            torch.save(result, config.result_path)
    dist.barrier(group=control)
    return result


def _stage_of(plan_dir: str, rank: int, world_size: int) -> int:
    from pathlib import Path

    from ...artifact.folder import read_manifest
    from ...errors import PlanFolderError

    table = rank_table(Plan.from_json(read_manifest(Path(plan_dir))["plan"]))
    if world_size != len(table):
        raise PlanFolderError(
            f"{plan_dir} holds a plan for {len(table)} ranks (one per device of every stage: "
            f"{[r.device for r in table]}), but {world_size} were started; start {len(table)}"
        )
    return table[rank].stage


