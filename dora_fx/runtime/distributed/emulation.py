"""Distributed runtime, emulation set-up: how a rank starts emulating its device and links
after the warm-up (``driver``).

Every rank prices its stage's recorded ops on its device and on the calibrated host, and the
ranks agree (all-reduce over the control group) on one dilation, ``time_scale`` (wall seconds
per emulated second): the smallest at which every device can be emulated on this host given
the bottleneck device and the host's contention (``compute_emulation.dilation``). Compute is
then stretched to the device's speed (``ComputeStretch``, relative to the stage's measured
host time or the host profile: ``RunConfig.compute_reference``), and transfers are shaped to
the plan's links and shared media (``LinkShaper`` on the ledger every process reserves airtime
on), paced by the schedule's contention policy. Under ``RunConfig.network == "kernel"`` the
links between the ranks' hosts are real and shaped by the kernel at bandwidth / time_scale (a
testbed), so the dilation cannot be agreed at run time: the run fixes it (``time_scale``), and
the shaper paces only the legs rank 0 stands in for (``links.Links.kernel_network``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...cost_models.cluster import Cluster
from ...cost_models.device import Device
from ..compute_emulation import agree_dilation
from ..cost_recorder import OpCost, stage_time_s
from ..network_emulation import LinkShaper, MediumLedger, resource_keys
from .config import RunConfig
from .wiring import RankInfo, StageWiring

__all__ = ["Emulation", "start_emulation"]


@dataclass(frozen=True)
class Emulation:
    time_scale: float
    device_item_s: float  # predicted seconds of one item on the emulated device
    host_item_s: float  # the same on the host's profile
    device_wall_s: float  # wall seconds one item takes under emulation
    stretch_factor: float
    ledger: MediumLedger
    shaper: LinkShaper


def start_emulation(
    config: RunConfig,
    cluster_json: dict[str, Any] | None,
    me: RankInfo,
    wiring: StageWiring,
    contention: str,
    ops: list[OpCost],
    host_measured_item_s: float,
    warmup_cpu_item_s: float,
    inflation: float,
    control: Any,
) -> Emulation:
    """Agree on the dilation with the other ranks and build this rank's compute stretch and
    link shaper (see the module doc). A collective: every rank calls it."""
    if config.host is None or cluster_json is None:
        raise ValueError(
            "emulation needs the calibrated host (RunConfig.host, from dora_fx.calibrate()) "
            "and the cluster in plan.json; pass emulate=False to run without it"
        )
    _check_network(config)
    cluster = Cluster.from_json(cluster_json)
    device, host = cluster.device(me.device), Device.from_json(config.host)
    device_item_s, host_item_s = stage_time_s(device, ops), stage_time_s(host, ops)
    reference = _host_reference_s(config.compute_reference, host_item_s, host_measured_item_s)
    scale = agree_dilation(
        reference, device_item_s, inflation, warmup_cpu_item_s, len(wiring.table), control,
        config.time_scale,
    )  # fmt: skip
    assert config.ledger_path is not None
    keys = resource_keys(cluster.network, [r.device for r in wiring.table])
    ledger = MediumLedger(config.ledger_path, keys)
    return Emulation(
        time_scale=scale,
        device_item_s=device_item_s,
        host_item_s=host_item_s,
        device_wall_s=scale * device_item_s,
        stretch_factor=scale * device_item_s / reference if reference > 0 else scale,
        ledger=ledger,
        shaper=LinkShaper(cluster.network, ledger, scale, me.rank, contention),
    )


NETWORKS = ("emulated", "kernel")


def _check_network(config: RunConfig) -> None:
    if config.network not in NETWORKS:
        raise ValueError(f"RunConfig.network must be one of {NETWORKS}, got {config.network!r}")
    if config.network == "kernel" and config.time_scale is None:
        raise ValueError(
            "network='kernel' needs a fixed time_scale: the kernel shapes the links at their "
            "bandwidth / time_scale before the run starts (dora_fx.testbed.shaped_for), so the "
            "ranks cannot pick the dilation themselves; pass the time_scale the testbed was "
            "shaped for"
        )


def _host_reference_s(reference: str, profile_item_s: float, measured_item_s: float) -> float:
    if reference == "profile":
        return profile_item_s
    if reference == "measured":
        return measured_item_s
    raise ValueError(f"compute_reference must be 'measured' or 'profile', got {reference!r}")
