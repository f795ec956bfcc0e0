"""What to simulate (``SimConfig``): how many requests, how they arrive (closed loop of
``concurrency`` in flight, or open loop at ``request_rate_rps``, periodic or Poisson), how
each is cut into microbatches, whether sends overlap compute, where requests come from and
results go. The simulator (``sim.simulator``) and the schedule simulator
(``sim.scheduled``) both read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import PlanError

__all__ = ["SimConfig"]

_ARRIVE, _COMPUTE_DONE, _FLOW_DONE, _DELIVER = 0, 1, 2, 3


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``request_rate_rps=None`` is a closed loop of ``concurrency``
    requests in flight. ``microbatches=None``: one for a plan, the schedule's own count for a
    compiled schedule (``simulate_schedule``); a number overrides either."""

    requests: int = 100
    request_rate_rps: float | None = None
    arrivals: Literal["periodic", "poisson"] = "periodic"
    concurrency: int = 1
    microbatches: int | None = None
    overlap: bool = True
    source: str | None = None
    sink: str | None = None
    seed: int = 0
    record_timeline: bool = True

    def __post_init__(self) -> None:
        for name in ("requests", "concurrency", "microbatches"):
            value = getattr(self, name)
            if name == "microbatches" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PlanError(f"SimConfig.{name} must be a positive int, got {value!r}")
        rate = self.request_rate_rps
        if rate is not None and (
            not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0
        ):
            raise PlanError(f"SimConfig.request_rate_rps must be positive, got {rate!r}")
        if self.arrivals not in ("periodic", "poisson"):
            raise PlanError(
                f"SimConfig.arrivals must be 'periodic' or 'poisson', got {self.arrivals!r}"
            )

    @property
    def microbatch_count(self) -> int:
        """Microbatches per request for a plan simulated without a schedule."""
        return 1 if self.microbatches is None else self.microbatches


