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

from dataclasses import dataclass
from typing import Any

__all__ = ["RunConfig", "STARTUP_TIMEOUT_S"]


@dataclass
class RunConfig:
    """What every rank of one run is told (JSON, so the launcher can hand it to processes).

    ``in_flight``: requests rank 0 lets into the pipeline at once (closed loop; 0 means one
    per rank); ``rate_rps``: release requests at this rate instead (open loop, device time).
    ``warmup``: requests run first, unmeasured and not emulated, to count each stage's
    operations. ``time_scale``: wall seconds per emulated second (None: the smallest at which
    every device can be emulated, times ``contention_margin``). ``host``: the calibrated host as
    ``Device`` JSON. ``compute_reference``: what a device's predicted time is scaled against,
    the stage's ``"measured"`` host time or the host ``"profile"`` (see ``compute_emulation``).
    ``microbatches``: None runs the plan's schedule as compiled; a count relowers it for that
    many (every rank the same way). ``fault``: ``{"rank": r, "item": k, "kind": "kill" |
    "hang"}`` makes a rank fail on purpose before the request holding its ``k``-th item of the
    stream (tests of the failure path).
    """

    plan_dir: str
    requests_path: str
    result_path: str | None = None
    progress_path: str | None = None
    microbatches: int | None = None
    in_flight: int = 0
    rate_rps: float | None = None
    warmup: int = 3
    timeout_s: float = 60.0
    emulate: bool = False
    time_scale: float | None = None
    host: dict[str, Any] | None = None
    compute_reference: str = "measured"
    ledger_path: str | None = None
    device: str = "cpu"
    threads: int = 1
    keep_outputs: bool = True
    fault: dict[str, Any] | None = None
    inbox_dir: str | None = None  # a streaming session (``runtime.session``)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**data)


STARTUP_TIMEOUT_S = 60.0


