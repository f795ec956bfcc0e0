"""Random planning problems (seeded) for property tests and the solver benchmark: blocks with
mixed compute/memory intensity, clusters drawn from the device presets on Wi-Fi, a switch or
both, and QoE targets scaled to what the cluster can do."""

from __future__ import annotations

import random

from ..analysis.problem import Block, Problem
from ..cost_models import presets
from ..cost_models.cluster import Cluster
from ..cost_models.network import Network
from ..qoe import QoE

__all__ = ["random_blocks", "random_cluster", "random_problem"]

_PRESETS = (
    presets.raspberry_pi_4,
    presets.jetson_nano,
    presets.jetson_orin_nano,
    presets.phone_snapdragon_8_gen_2,
    presets.laptop_core_i7_1165g7,
    presets.edge_server_t4,
)


def random_blocks(rng: random.Random, n_blocks: int, batch: int = 1) -> list[Block]:
    blocks = []
    for i in range(n_blocks):
        flops = batch * 10 ** rng.uniform(8.0, 10.5)
        params = 10 ** rng.uniform(4.0, 7.5)
        activations = batch * 10 ** rng.uniform(4.0, 6.5)
        blocks.append(
            Block(
                flops=flops,
                bytes=params + 3 * activations,
                out_bytes=activations * rng.uniform(0.2, 1.5),
                param_bytes=params,
                dense_flops=flops * rng.uniform(0.5, 1.0),
                ops=rng.randint(1, 30),
                name=f"b{i}",
            )
        )
    return blocks


def random_cluster(rng: random.Random, n_devices: int) -> Cluster:
    """Devices drawn from the presets (repeats allowed), on one Wi-Fi AP, one switch, or split."""
    devices = tuple(rng.choice(_PRESETS)(f"d{i}") for i in range(n_devices))
    names = [d.name for d in devices]
    kind = rng.choice(("wifi", "switch", "mixed"))
    network: Network
    if kind == "wifi":
        network = presets.wifi5_ap(names)
    elif kind == "switch":
        network = presets.gigabit_switch(names)
    else:
        cut = rng.randint(1, max(n_devices - 1, 1))
        network = presets.merge_networks(
            "mixed", presets.wifi6_ap(names[:cut]), presets.gigabit_switch(names[cut:])
        )
    return Cluster(devices, network, name=f"random-{kind}")


def random_problem(
    seed: int, n_blocks: int, n_devices: int, *, batch: int | None = None, qoe: QoE | None = None
) -> Problem:
    """A seeded random problem; without ``qoe`` the targets are random multiples of what the
    fastest device alone achieves (some loose, some tight, some infeasible)."""
    rng = random.Random(seed)
    batch = batch or rng.choice((1, 2, 4))
    blocks = random_blocks(rng, n_blocks, batch)
    cluster = random_cluster(rng, n_devices)
    if qoe is None:
        qoe = _random_qoe(rng, blocks, cluster, batch)
    return Problem(tuple(blocks), cluster, qoe, batch, input_bytes=batch * 10 ** rng.uniform(4, 6))


def _random_qoe(rng: random.Random, blocks: list[Block], cluster: Cluster, batch: int) -> QoE:
    alone_s = min(
        sum(d.block_time_s(b.flops, b.dense, b.bytes, b.ops) for b in blocks)
        for d in cluster.devices
    )
    objective = rng.choice(("latency", "throughput", "energy"))
    latency_ms = 1e3 * alone_s * rng.uniform(0.5, 3.0) if rng.random() < 0.6 else None
    throughput = rng.uniform(0.3, 2.0) / alone_s if rng.random() < 0.4 else None
    energy = None
    if rng.random() < 0.3:
        busy_w = min(d.busy_power_w for d in cluster.devices)
        energy = busy_w * alone_s * rng.uniform(0.5, 4.0)
    return QoE(
        latency_ms=latency_ms,
        throughput_rps=throughput,
        energy_j=energy,
        objective=objective,  # type: ignore[arg-type]
        batch=batch,
    )
