"""Device model: what one edge device can compute, hold and burn.

A device is a roofline per op class. A node of class ``c`` with ``F`` FLOPs that moves ``Q``
bytes takes

    t = op_overhead_s + max(F / R_c, Q / B)

where ``R_dense`` (matmul, conv, attention) and ``R_other`` (elementwise, normalization,
reductions) are sustained FLOP/s and ``B`` the sustained memory bandwidth; ``view`` nodes are
free. Sustained = peak x efficiency: presets give the spec-sheet peak (sources in
docs/devices.md) and an efficiency; a calibrated host profile gives measured rates with
efficiency 1. A stage's time is the sum of its nodes' times.

A device may also carry a ``bandwidth_curve``: bandwidth measured at several output tensor
sizes, since caches and the allocator make small and large tensors move at very different
rates (a cache-aware roofline; on a calibrated CPU host, tensors that fit the last-level cache
stream several times faster than those above the allocator's mmap threshold, which take page
faults on every call). Node times of ``other`` nodes use it; block times, which only know a
block's total traffic, use the single ``memory_bandwidth_bytes_per_s``.

``page_fault_bytes_per_s`` and ``fresh_output_bytes`` (optional, measured by calibration)
add the cost of fresh pages: outputs at least ``fresh_output_bytes`` large come from the OS
on every call (above glibc's mmap threshold, 32 MB at most) and each page is faulted in and
zeroed at first touch, at ``page_fault_bytes_per_s``. Node times add it; block times do not
know their nodes' output sizes and leave it out.

``dense_bandwidth_bytes_per_s`` (optional) is the rate at which dense kernels stream the bytes
their cost records count when they are not compute-bound. On a CPU host it lies well below the
memory bandwidth: eager convolution kernels reorder layouts, and depthwise and low-channel
convolutions run far from both roofs. Unset, dense nodes use the memory bandwidth (the curve
at their output size, if there is one). Node and block times both use it for dense bytes.

Blocks (``dora_fx.Problem``) keep per-class sums rather than per-node figures, so a block is
costed as two rooflines, one per class (``block_time_s``): exact when every node of a class is
on the same side of the ridge point, and never below the single roofline of the totals.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import ClusterError, ProfileError

Flops = TypeVar("Flops", float, np.ndarray)

__all__ = ["Device", "PROFILE_FORMAT"]

PROFILE_FORMAT = "dora_fx.device_profile/1"

# Fields a profile must state; the rest have defaults that are safe to assume.
_REQUIRED_PROFILE_FIELDS = (
    "name",
    "dense_flops_per_s",
    "other_flops_per_s",
    "memory_bandwidth_bytes_per_s",
    "op_overhead_s",
)


@dataclass(frozen=True)
class Device:
    """One device.

    ``dense_flops_per_s`` / ``other_flops_per_s`` / ``memory_bandwidth_bytes_per_s`` are peak
    figures and the ``*_efficiency`` fields the fraction of peak that real kernels sustain.
    ``other_flops_per_s=None`` means a quarter of the dense peak (vector units without the
    matrix engines). ``busy_power_w`` is the whole device while computing, ``idle_power_w``
    while waiting (powered, in the plan, nothing to do).
    """

    name: str
    dense_flops_per_s: float
    other_flops_per_s: float | None = None
    memory_bandwidth_bytes_per_s: float = 10e9
    memory_bytes: float = 4 * 2**30
    op_overhead_s: float = 0.0
    busy_power_w: float = 5.0
    idle_power_w: float = 1.0
    kind: str = "generic"
    dense_efficiency: float = 1.0
    other_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    bandwidth_curve: tuple[tuple[float, float], ...] = ()
    dense_bandwidth_bytes_per_s: float | None = None
    page_fault_bytes_per_s: float | None = None
    fresh_output_bytes: float | None = None
    misaligned_dense_efficiency: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "bandwidth_curve",
            tuple(sorted((float(q), float(b)) for q, b in self.bandwidth_curve)),
        )
        for traffic, bandwidth in self.bandwidth_curve:
            if not (
                math.isfinite(traffic)
                and traffic > 0
                and math.isfinite(bandwidth)
                and bandwidth > 0
            ):
                raise ClusterError(
                    f"device {self.name!r}: bandwidth_curve holds (bytes, bytes/s) pairs, both "
                    f"positive and finite, got ({traffic!r}, {bandwidth!r})"
                )
        if not isinstance(self.name, str) or not self.name:
            raise ClusterError(f"Device.name must be a non-empty string, got {self.name!r}")
        for name in ("dense_flops_per_s", "memory_bandwidth_bytes_per_s", "memory_bytes"):
            _check_positive(self.name, name, getattr(self, name))
        for name in (
            "other_flops_per_s",
            "dense_bandwidth_bytes_per_s",
            "page_fault_bytes_per_s",
            "fresh_output_bytes",
        ):
            if getattr(self, name) is not None:
                _check_positive(self.name, name, getattr(self, name))
        for name in (
            "dense_efficiency", "other_efficiency", "memory_efficiency", "misaligned_dense_efficiency",
        ):  # fmt: skip
            value = getattr(self, name)
            _check_positive(self.name, name, value)
            if value > 1.0:
                raise ClusterError(
                    f"device {self.name!r}: {name} is a fraction of peak, expected (0, 1], got "
                    f"{value!r}; raise the peak figure instead"
                )
        for name in ("op_overhead_s", "busy_power_w", "idle_power_w"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ClusterError(
                    f"device {self.name!r}: {name} must be >= 0 and finite, got {value!r}"
                )
        if self.idle_power_w > self.busy_power_w:
            raise ClusterError(
                f"device {self.name!r}: idle_power_w={self.idle_power_w!r} is above "
                f"busy_power_w={self.busy_power_w!r}; a device cannot burn less when busy"
            )

    # -- sustained rates ---------------------------------------------------------------------

    @property
    def effective_other_flops_per_s(self) -> float:
        """Peak FLOP/s of non-matmul ops (a quarter of dense peak unless the spec says)."""
        if self.other_flops_per_s is not None:
            return self.other_flops_per_s
        return self.dense_flops_per_s / 4

    @property
    def sustained_dense_flops_per_s(self) -> float:
        return self.dense_flops_per_s * self.dense_efficiency

    @property
    def sustained_other_flops_per_s(self) -> float:
        return self.effective_other_flops_per_s * self.other_efficiency

    @property
    def sustained_bandwidth_bytes_per_s(self) -> float:
        return self.memory_bandwidth_bytes_per_s * self.memory_efficiency

    @property
    def sustained_dense_bandwidth_bytes_per_s(self) -> float:
        """Bandwidth of dense bytes in block times (and node times when it is set)."""
        if self.dense_bandwidth_bytes_per_s is None:
            return self.sustained_bandwidth_bytes_per_s
        return self.dense_bandwidth_bytes_per_s * self.memory_efficiency

    def dense_equivalent_flops(self, dense_flops: Flops, misaligned_flops: Flops) -> Flops:
        """Dense FLOPs priced at the dense rate: the ``misaligned_flops`` among them (matrix
        multiplies whose output rows are not whole 32-byte vectors) count ``1 / efficiency`` each.
        Floats or numpy arrays (the planner's tables price every block range at once)."""
        return dense_flops + misaligned_flops * (1 / self.misaligned_dense_efficiency - 1)

    # -- time -----------------------------------------------------------------------------------

    def node_time_s(
        self,
        flops: float,
        bytes_moved: float,
        op_class: str,
        output_bytes: float | None = None,
        misaligned_flops: float = 0.0,
    ) -> float:
        """Roofline time of one node; ``op_class`` is ``dense``, ``other`` or ``view``.
        ``output_bytes`` (default: half the traffic) picks the point of a bandwidth curve;
        ``misaligned_flops`` (a dense node's FLOPs when its rows are misaligned) run slower."""
        if op_class == "view":
            return 0.0
        tensor = bytes_moved / 2 if output_bytes is None else output_bytes
        if op_class == "dense":
            rate = self.sustained_dense_flops_per_s
            flops = self.dense_equivalent_flops(flops, misaligned_flops)
            if self.dense_bandwidth_bytes_per_s is not None:
                bandwidth = self.sustained_dense_bandwidth_bytes_per_s
            else:
                bandwidth = self.bandwidth_at(tensor)
        elif op_class == "other":
            rate = self.sustained_other_flops_per_s
            bandwidth = self.bandwidth_at(tensor)
        else:
            raise ClusterError(
                f"device {self.name!r}: op_class must be 'dense', 'other' or 'view', got "
                f"{op_class!r}"
            )
        return (
            self.op_overhead_s
            + max(flops / rate, bytes_moved / bandwidth)
            + self.fresh_pages_s(tensor)
        )

    def fresh_pages_s(self, output_bytes: float) -> float:
        """Time to fault in fresh pages for an output of ``output_bytes``: with
        ``page_fault_bytes_per_s`` and ``fresh_output_bytes`` set, outputs at least that
        large get fresh pages from the OS on every call (glibc serves them with mmap and
        returns them on free), each page zeroed at first touch; otherwise 0."""
        rate, threshold = self.page_fault_bytes_per_s, self.fresh_output_bytes
        if rate is None or threshold is None or output_bytes < threshold:
            return 0.0
        return output_bytes / rate

    def bandwidth_at(self, tensor_bytes: float) -> float:
        """Sustained bandwidth for a node whose output tensor has ``tensor_bytes``.

        A cache-aware roofline: with a measured ``bandwidth_curve``, the
        bandwidth measured at that tensor size, interpolated log-log and clamped at the ends
        (small tensors stay in cache; large ones pay DRAM, and above the allocator's mmap
        threshold, page faults on every call); otherwise the single figure.
        """
        bytes_moved = tensor_bytes
        curve = self.bandwidth_curve
        if not curve or bytes_moved <= 0:
            return self.sustained_bandwidth_bytes_per_s
        if bytes_moved <= curve[0][0]:
            return curve[0][1] * self.memory_efficiency
        if bytes_moved >= curve[-1][0]:
            return curve[-1][1] * self.memory_efficiency
        for (q0, b0), (q1, b1) in zip(curve, curve[1:]):
            if bytes_moved <= q1:
                w = math.log(bytes_moved / q0) / math.log(q1 / q0)
                return math.exp((1 - w) * math.log(b0) + w * math.log(b1)) * self.memory_efficiency
        return curve[-1][1] * self.memory_efficiency  # not reached

    def block_time_s(
        self,
        flops: float,
        dense_flops: float,
        bytes_moved: float,
        ops: float,
        dense_bytes: float | None = None,
        misaligned_flops: float = 0.0,
    ) -> float:
        """Time of a run of nodes from its per-class sums (``misaligned_flops``: see
        ``dense_equivalent_flops``).

        With ``dense_bytes`` (bytes moved by dense nodes) it is one roofline per class:
        ``ops*overhead + max(Fd/Rd, Qd/Bd) + max(Fo/Ro, Qo/B)`` (``Bd`` the dense bandwidth,
        ``B`` the memory bandwidth); without it, the single roofline of the totals
        ``ops*overhead + max(Fd/Rd + Fo/Ro, Q/B)``. ``planner/tables.py`` mirrors this.
        """
        other_flops = max(flops - dense_flops, 0.0)
        dense_flops = self.dense_equivalent_flops(dense_flops, misaligned_flops)
        bandwidth = self.sustained_bandwidth_bytes_per_s
        dense_rate = self.sustained_dense_flops_per_s
        other_rate = self.sustained_other_flops_per_s
        if dense_bytes is None:
            compute_s = max(
                dense_flops / dense_rate + other_flops / other_rate, bytes_moved / bandwidth
            )
        else:
            other_bytes = max(bytes_moved - dense_bytes, 0.0)
            dense_bandwidth = self.sustained_dense_bandwidth_bytes_per_s
            compute_s = max(dense_flops / dense_rate, dense_bytes / dense_bandwidth) + max(
                other_flops / other_rate, other_bytes / bandwidth
            )
        return ops * self.op_overhead_s + compute_s

    # -- editing and serialization ---------------------------------------------------------

    def replace(self, **changes: Any) -> Device:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["bandwidth_curve"] = [list(p) for p in self.bandwidth_curve]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Device:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ClusterError(
                f"device {data.get('name', '?')!r}: unknown fields {unknown}; a Device has {sorted(known)}"
            )
        if "bandwidth_curve" in data:
            data = {**data, "bandwidth_curve": tuple(tuple(p) for p in data["bandwidth_curve"])}
        return cls(**data)

    def save_profile(
        self,
        path: str | Path,
        measurements: list[dict[str, Any]] | None = None,
        host: dict[str, Any] | None = None,
    ) -> Path:
        """Write this device as a profile JSON (what ``calibrate`` produces)."""
        path = Path(path)
        doc = {
            "format": PROFILE_FORMAT,
            "device": self.to_json(),
            "host": host or {},
            "measurements": measurements or [],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return path

    @classmethod
    def from_profile(cls, source: str | Path | dict[str, Any]) -> Device:
        """Read a device profile (a path to its JSON, or the parsed document)."""
        where = "profile" if isinstance(source, dict) else str(source)
        if isinstance(source, dict):
            doc = source
        else:
            try:
                doc = json.loads(Path(source).read_text())
            except OSError as exc:
                raise ProfileError(f"cannot read device profile {where}: {exc}") from None
            except json.JSONDecodeError as exc:
                raise ProfileError(f"device profile {where} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("device"), dict):
            raise ProfileError(
                f"device profile {where}: expected a JSON object with a 'device' object "
                f"(format {PROFILE_FORMAT!r}); write one with dora_fx.calibrate()"
            )
        if doc.get("format", PROFILE_FORMAT) != PROFILE_FORMAT:
            raise ProfileError(
                f"device profile {where}: format {doc.get('format')!r}, expected {PROFILE_FORMAT!r}"
            )
        spec = doc["device"]
        missing = [k for k in _REQUIRED_PROFILE_FIELDS if spec.get(k) is None]
        if missing:
            raise ProfileError(
                f"device profile {where}: device is missing {missing} (required: "
                f"{list(_REQUIRED_PROFILE_FIELDS)}); re-run dora_fx.calibrate() or add them"
            )
        try:
            return cls.from_json(spec)
        except (ClusterError, TypeError) as exc:
            raise ProfileError(f"device profile {where}: {exc}") from None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive(device: str, name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type,operator]
        raise ClusterError(
            f"device {device!r}: {name} must be positive and finite, got {value!r}; "
            "use the device's spec-sheet figure or dora_fx.calibrate() for the host"
        )
