"""Distributed runtime: one process (rank) per device, tensors over torch.distributed P2P.

Ranks follow the plan, stage by stage and device by device within a data-parallel group::

    stage 0 (phone)  stage 1 (laptop, jetson; shares .4 .6)  stage 2 (rpi4)
    rank 0           rank 1, rank 2                            rank 3

Its parts: ``distributed_wiring`` says which rank runs which stage and what each stage sends
where, ``distributed_transport`` moves tensors (self-describing headers, chunked messages,
receiver threads, data-parallel scatter and gather, the link shaper hook),
``distributed_schedule`` executes a stage's schedule actions (POST, WAIT, F, SEND, SENT) per
request, ``distributed_driver`` runs a rank (warm-up, emulation set-up, the request stream or a
streaming session, timing, injected faults) and ``session`` keeps a plan's ranks serving
requests as they come. This module is their public face.
"""

from __future__ import annotations

from .distributed_driver import STARTUP_TIMEOUT_S, RunConfig, run_rank
from .distributed_transport import INPUT_TAG, OUTPUT_TAG, DistTransport
from .distributed_wiring import RankInfo, StageWiring, batch_rows, rank_table, split_sizes

__all__ = [
    "RankInfo",
    "rank_table",
    "split_sizes",
    "batch_rows",
    "StageWiring",
    "DistTransport",
    "INPUT_TAG",
    "OUTPUT_TAG",
    "RunConfig",
    "run_rank",
    "STARTUP_TIMEOUT_S",
]
