"""Device model: what one edge device can compute, hold and burn.

Spine version: the fields the partitioner and explain() need. The cost-model issue adds the
roofline timing, presets with sources, and profiles measured by calibration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ClusterError

__all__ = ["Device"]


@dataclass(frozen=True)
class Device:
    """One device. Rates are peak figures; efficiencies live in calibrated profiles."""

    name: str
    dense_flops_per_s: float
    other_flops_per_s: float | None = None
    memory_bandwidth_bytes_per_s: float = 10e9
    memory_bytes: float = 4 * 2**30
    op_overhead_s: float = 0.0
    busy_power_w: float = 5.0
    idle_power_w: float = 1.0
    kind: str = "generic"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ClusterError(f"Device.name must be a non-empty string, got {self.name!r}")
        for field in (
            "dense_flops_per_s",
            "memory_bandwidth_bytes_per_s",
            "memory_bytes",
        ):
            _check_positive(self.name, field, getattr(self, field))
        if self.other_flops_per_s is not None:
            _check_positive(self.name, "other_flops_per_s", self.other_flops_per_s)
        for field in ("op_overhead_s", "busy_power_w", "idle_power_w"):
            value = getattr(self, field)
            if not math.isfinite(value) or value < 0:
                raise ClusterError(
                    f"device {self.name!r}: {field} must be >= 0 and finite, got {value!r}"
                )

    @property
    def effective_other_flops_per_s(self) -> float:
        """Non-matmul ops run at a fraction of dense peak unless the spec says otherwise."""
        if self.other_flops_per_s is not None:
            return self.other_flops_per_s
        return self.dense_flops_per_s / 4

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Device:
        return cls(**data)


def _check_positive(device: str, field: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ClusterError(
            f"device {device!r}: {field} must be positive and finite, got {value!r}"
        )
