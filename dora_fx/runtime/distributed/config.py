"""Distributed runtime, config: what every rank of one run is told (``RunConfig``, JSON so
the launcher can hand it to processes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RunConfig", "STARTUP_TIMEOUT_S"]


@dataclass
class RunConfig:
    """What every rank of one run is told (JSON, so the launcher can hand it to processes).

    ``in_flight``: requests rank 0 lets into the pipeline at once (closed loop; 0 means one
    per rank); ``rate_rps``: release requests at this rate instead (open loop, device time);
    ``arrivals_s``: or at these times (a trace: device seconds from the stream's start, one per
    request). ``outbox_dir``: rank 0 writes each answer there as it is collected
    (``inbox.write_answer``, named by the request's position), so results stream back; on a
    failure rank 0 saves the outputs it collected next to the result (``PARTIAL_SUFFIX``).
    ``warmup``: requests run first, unmeasured and not emulated, to count each stage's
    operations. ``time_scale``: wall seconds per emulated second (None: the smallest at which
    every device can be emulated, times ``contention_margin``). ``host``: the calibrated host as
    ``Device`` JSON. ``compute_reference``: what a device's predicted time is scaled against,
    the stage's ``"measured"`` host time or the host ``"profile"`` (see ``compute_emulation``).
    ``microbatches``: None runs the plan's schedule as compiled; a count relowers it for that
    many (every rank the same way). ``fault``: ``{"rank": r, "item": k, "kind": "kill" |
    "hang"}`` makes a rank fail on purpose before the request holding its ``k``-th item of the
    stream (tests of the failure path). ``network``: under emulation, ``"emulated"`` paces
    every transfer to the plan's links (``network_emulation``); ``"kernel"`` leaves the links
    between the ranks' hosts to the kernel (a testbed whose links ``tc`` shapes at the plan's
    rates over ``time_scale``, which must then be fixed: ``dora_fx.testbed``), and paces only
    the legs rank 0 stands in for (user inputs from another source device, outputs to another
    sink).
    """

    plan_dir: str
    requests_path: str
    result_path: str | None = None
    progress_path: str | None = None
    microbatches: int | None = None
    in_flight: int = 0
    rate_rps: float | None = None
    arrivals_s: list[float] | None = None
    outbox_dir: str | None = None
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
    inbox_dir: str | None = None  # a streaming session (``session``)
    grad: bool = False  # run the stages with autograd recording (inference: off)
    training: bool = False  # the stage modules' train/eval mode
    network: str = "emulated"  # or "kernel": the hosts' links are real (see above)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**data)


STARTUP_TIMEOUT_S = 60.0


