"""The user's quality-of-experience targets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import QoEError

__all__ = ["QoE", "Objective"]

Objective = Literal["latency", "throughput", "energy"]
_OBJECTIVES = ("latency", "throughput", "energy")


@dataclass(frozen=True)
class QoE:
    """What the user needs from a deployment.

    ``latency_ms``: per-request latency SLO; ``throughput_rps``: floor on requests per second;
    ``energy_j``: budget of energy per request across all devices; ``objective``: what to
    optimize once the constraints hold. ``batch`` is the request batch size the user expects and
    ``request_rate_rps`` the offered load (None: closed loop, one request at a time).
    ``source``: the device requests come from, ``sink``: the device results must reach (None:
    the cluster's ``source``, e.g. the phone of smart_home); both are priced and performed.

    Training (``compile(mode="train")``): ``iteration_ms`` bounds the time of one training
    iteration (forward and backward of one batch of ``batch`` rows, gradients reduced);
    ``throughput_rps`` then floors iterations per second and ``energy_j`` is per iteration;
    the objectives ``latency`` and ``throughput`` both minimize the iteration time.
    """

    latency_ms: float | None = None
    throughput_rps: float | None = None
    energy_j: float | None = None
    objective: Objective = "latency"
    batch: int = 1
    request_rate_rps: float | None = None
    source: str | None = None
    sink: str | None = None
    iteration_ms: float | None = None

    def __post_init__(self) -> None:
        for role in ("source", "sink"):
            value = getattr(self, role)
            if value is not None and (not isinstance(value, str) or not value):
                raise QoEError(f"QoE.{role} must be a device name (a str), got {value!r}")
        for name in ("latency_ms", "throughput_rps", "energy_j", "request_rate_rps", "iteration_ms"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise QoEError(f"QoE.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise QoEError(f"QoE.{name} must be positive and finite, got {value!r}")
        if self.objective not in _OBJECTIVES:
            raise QoEError(f"QoE.objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise QoEError(f"QoE.batch must be a positive int, got {self.batch!r}")
        self._check_consistent()

    def _check_consistent(self) -> None:
        # No plan serves more requests per second than are offered.
        if (
            self.request_rate_rps is not None
            and self.throughput_rps is not None
            and self.throughput_rps > self.request_rate_rps
        ):
            raise QoEError(
                f"QoE asks for throughput_rps={self.throughput_rps} but offers only "
                f"request_rate_rps={self.request_rate_rps}: throughput cannot exceed the "
                "offered load; lower throughput_rps or raise request_rate_rps"
            )

    @property
    def latency_s(self) -> float | None:
        return None if self.latency_ms is None else self.latency_ms / 1e3

    @property
    def iteration_s(self) -> float | None:
        return None if self.iteration_ms is None else self.iteration_ms / 1e3

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if data["iteration_ms"] is None:  # inference QoEs keep their JSON as it was
            del data["iteration_ms"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QoE:
        return cls(**data)

    def __str__(self) -> str:
        parts = [f"objective={self.objective}", f"batch={self.batch}"]
        if self.latency_ms is not None:
            parts.append(f"latency<={self.latency_ms:g}ms")
        if self.throughput_rps is not None:
            parts.append(f"throughput>={self.throughput_rps:g}rps")
        if self.energy_j is not None:
            parts.append(f"energy<={self.energy_j:g}J")
        if self.request_rate_rps is not None:
            parts.append(f"load={self.request_rate_rps:g}rps")
        if self.iteration_ms is not None:
            parts.append(f"iteration<={self.iteration_ms:g}ms")
        if self.source is not None:
            parts.append(f"source={self.source}")
        if self.sink is not None:
            parts.append(f"sink={self.sink}")
        return "QoE(" + ", ".join(parts) + ")"
