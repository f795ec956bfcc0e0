"""Small problems and plans for the simulator tests (imported by them; not a conftest, so
the name cannot clash with tests/conftest.py)."""

from __future__ import annotations

from hypothesis import strategies as st

from dora_fx.analysis.problem import Block, Problem
from dora_fx.cost_models import Cluster, Device, Link, Medium, Network
from dora_fx.ir.plan import Plan, Stage


def chain_problem(cluster: Cluster, n_blocks: int = 6, batch: int = 4, flops: float = 2e9,
                  out_bytes: float = 4e6, input_bytes: float = 2e6) -> Problem:
    blocks = tuple(
        Block(flops=flops, bytes=5e7, out_bytes=out_bytes, param_bytes=1e7, dense_flops=0.9 * flops, ops=10, name=f"b{i}")
        for i in range(n_blocks)
    )
    return Problem(blocks, cluster, batch=batch, input_bytes=input_bytes)


def pipeline(devices: list[str], n_blocks: int, name: str = "p") -> Plan:
    k = len(devices)
    bounds = [round(i * n_blocks / k) for i in range(k + 1)]
    return Plan(name, tuple(Stage(i, bounds[i], bounds[i + 1], (d,)) for i, d in enumerate(devices)))


NAMES = ["d0", "d1", "d2", "d3"]


@st.composite
def clusters(draw) -> Cluster:
    devices = tuple(
        Device(
            n,
            dense_flops_per_s=draw(st.floats(1e9, 1e12)),
            memory_bandwidth_bytes_per_s=draw(st.floats(1e9, 1e11)),
            op_overhead_s=draw(st.floats(0, 1e-4)),
            busy_power_w=draw(st.floats(5, 50)),
            idle_power_w=draw(st.floats(0, 5)),
        )
        for n in NAMES
    )
    shared = draw(st.lists(st.sampled_from(NAMES), unique=True))
    links = tuple(
        Link(n, "air" if n in shared else "sw", draw(st.floats(1e6, 1e9)), draw(st.floats(1e6, 1e9)),
             latency_s=draw(st.floats(0, 5e-3)), tx_j_per_byte=1e-8, rx_j_per_byte=1e-8)
        for n in NAMES
    )
    media = (Medium("air", "shared", draw(st.floats(0.5, 1.0))), Medium("sw", "switched"))
    return Cluster(devices, Network("n", media=media, links=links))


@st.composite
def problems(draw) -> Problem:
    cluster = draw(clusters())
    n = draw(st.integers(1, 8))
    blocks = []
    for i in range(n):
        flops = draw(st.floats(1e6, 1e10))
        blocks.append(
            Block(
                flops=flops,
                dense_flops=flops * draw(st.floats(0, 1)),
                bytes=draw(st.floats(1e5, 1e8)),
                out_bytes=draw(st.floats(0, 1e7)),
                param_bytes=draw(st.floats(0, 1e5)),
                ops=draw(st.integers(1, 50)),
                name=f"b{i}",
            )
        )
    return Problem(tuple(blocks), cluster, batch=draw(st.integers(1, 8)), input_bytes=draw(st.floats(0, 1e7)))


@st.composite
def plans(draw, problem: Problem) -> Plan:
    n = len(problem.blocks)
    k = draw(st.integers(1, min(n, 3)))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), unique=True, min_size=k - 1, max_size=k - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    stages = []
    for i in range(len(bounds) - 1):
        group = draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1, max_size=2))
        raw = [draw(st.floats(0.1, 1.0)) for _ in group]
        shares = tuple(r / sum(raw) for r in raw)
        stages.append(Stage(i, bounds[i], bounds[i + 1], tuple(group), shares))
    return Plan("random", tuple(stages), batch=problem.batch)
