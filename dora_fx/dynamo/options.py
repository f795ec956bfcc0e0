"""The options of the ``dora`` torch.compile backend: what each means, and their checks.

``torch.compile(model, backend="dora", options={...})`` hands the dict to the backend as the
``options`` keyword; ``dora_fx.backend(devices, qoe, **options)`` takes the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..cost_models.cluster import Cluster
from ..cost_models.device import Device
from ..errors import BackendOptionError
from ..qoe import QoE

__all__ = ["BackendOptions", "OPTIONS", "DEFAULT_MIN_FLOPS"]

# Below this many FLOPs (at the graph's example inputs) a graph runs on one device: at edge
# link rates a cut costs milliseconds, what ~1e7 FLOPs take on a phone-class device.
DEFAULT_MIN_FLOPS = 1e7

OPTIONS = {
    "devices": "a dora_fx.Cluster (e.g. dora_fx.scenarios.smart_home()) or a list of dora_fx.Device",
    "qoe": "a dora_fx.QoE (default: QoE(), best latency)",
    "runtime": "'inprocess' (default: every stage in this process) or 'distributed' (one "
    "process per device, kept up for the compiled function's calls)",
    "min_flops": f"graphs with fewer FLOPs run on one device (default {DEFAULT_MIN_FLOPS:g})",
    "num_stages": "pipeline stages, as dora_fx.compile's num_stages",
    "microbatches": "microbatches per call, as dora_fx.compile's microbatches",
    "plan": "a fixed plan (dora_fx.Plan or its text), as dora_fx.compile's plan",
    "max_blocks": "most blocks the partitioner sees, as dora_fx.compile's max_blocks",
    "aot": "True (default): a graph called with autograd on and inputs that need gradients "
    "goes through AOTAutograd, its backward cut at the forward's stages; False: the forward's "
    "stages run under autograd, which records one backward",
}
_RUNTIMES = ("inprocess", "distributed")
COMPILE_OPTIONS = ("num_stages", "microbatches", "plan", "max_blocks")


@dataclass(frozen=True)
class BackendOptions:
    devices: Cluster | list[Device]
    qoe: QoE = field(default_factory=QoE)
    runtime: str = "inprocess"
    min_flops: float = DEFAULT_MIN_FLOPS
    aot: bool = True
    compile_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> BackendOptions:
        if options is None:
            raise BackendOptionError(
                "the 'dora' backend needs options: torch.compile(model, backend='dora', "
                "options={'devices': dora_fx.scenarios.smart_home(), 'qoe': dora_fx.QoE(...)}), "
                "or backend=dora_fx.backend(devices, qoe)"
            )
        if not isinstance(options, Mapping):
            raise BackendOptionError(f"options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            known = "; ".join(f"{k}: {v}" for k, v in OPTIONS.items())
            raise BackendOptionError(f"unknown option(s) {unknown} for backend 'dora'; known: {known}")
        if "devices" not in options:
            raise BackendOptionError(f"option 'devices' is missing: {OPTIONS['devices']}")
        parsed = cls(
            devices=_devices(options["devices"]),
            qoe=_qoe(options.get("qoe")),
            runtime=_runtime(options.get("runtime", "inprocess")),
            min_flops=_min_flops(options.get("min_flops", DEFAULT_MIN_FLOPS)),
            aot=_flag("aot", options.get("aot", True)),
            compile_options={k: options[k] for k in COMPILE_OPTIONS if k in options},
        )
        return parsed


def _devices(value: Any) -> Cluster | list[Device]:
    if isinstance(value, Cluster):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(d, Device) for d in value):
        return list(value)
    raise BackendOptionError(
        f"option 'devices' must be {OPTIONS['devices']}, got {type(value).__name__}"
    )


def _qoe(value: Any) -> QoE:
    if value is None:
        return QoE()
    if not isinstance(value, QoE):
        raise BackendOptionError(f"option 'qoe' must be {OPTIONS['qoe']}, got {type(value).__name__}")
    return value


def _runtime(value: Any) -> str:
    if value not in _RUNTIMES:
        raise BackendOptionError(f"option 'runtime' must be {OPTIONS['runtime']}, got {value!r}")
    return str(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BackendOptionError(f"option {name!r} must be {OPTIONS[name]}, got {value!r}")
    return value


def _min_flops(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BackendOptionError(
            f"option 'min_flops' must be a non-negative number, got {value!r}"
        )
    return float(value)
