"""Cost tables of every stage option and every stage-to-stage transfer, computed at once.

The solver sees a plan as a path ``0 = c_0 < c_1 < ... < c_K = B`` through the cut positions;
stage ``k`` is an *option* ``(g, a, b)``: group type ``g`` runs blocks ``[a, b)``, and between
stages ``k`` and ``k+1`` a *transition* ``(g, g', j)`` moves the tensors crossing cut ``j``.
With one microbatch every figure ``evaluate`` reports is a sum or a maximum of per-option and
per-transition terms, which these tables hold:

* option: compute time of the stage ``C = max_d t_d`` with ``t_d`` the roofline time of device
  ``d`` on its share ``s_d`` (``analysis.work``: FLOPs and activation traffic scale with ``s_d``,
  weight traffic and per-op overhead do not), the busy-energy term
  ``sum_d (P_busy_d - P_idle_d) t_d``, per-class busy sums, and whether each device's memory
  (weights of ``[a, b)`` plus ``s_d`` times the activation peak) fits;
* transition: step time ``X = max_f (lat_f + 8 o_f bytes_j / r_f)`` over its flows ``f`` (rates
  ``r_f`` from ``Network.flow_rates_bps`` of the step's flows, ``o_f`` the slice overlap), port
  and airtime load per byte, flow counts per shared medium, radio joules per byte;
* scatter: the same for stage 0's input, sent from the problem's source (default: the group's
  first device) to the group's devices; gather: the last stage's outputs sent from its
  devices to the problem's sink (none without a sink). The source and the sink are classes of
  their own (``space``), so a group type says whether it holds them.

The roofline here mirrors ``Device.block_time_s`` on numpy arrays; a test compares the tables
with ``evaluate`` on random plans so the two cannot drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.problem import Problem
from ..analysis.work import _route  # the one routing rule: slices of the batch, overlap bytes
from ..cost_models.device import Device
from ..cost_models.network import Network
from .space import GroupType, PlanSpace

__all__ = ["FlowTerms", "OptionTable", "Tables", "build_tables"]

FloatArray = np.ndarray


@dataclass(frozen=True)
class FlowTerms:
    """A set of concurrent flows, per byte of the tensor they carry (its bytes scale all)."""

    latency_s: FloatArray  # per flow: path latency
    s_per_byte: FloatArray  # per flow: 8 * overlap / rate
    port_s_per_byte: float  # busiest switched port direction: seconds per tensor byte
    first_up_s_per_byte: float  # up port of the sending group's first device
    air_s_per_byte: FloatArray  # per shared medium: airtime per tensor byte
    air_flows: FloatArray  # per shared medium: flows using it
    radio_j_per_byte: float

    def step_s(self, nbytes: FloatArray) -> FloatArray:
        """Time for all flows, started together, to arrive: ``max_f lat_f + k_f bytes``."""
        if self.latency_s.size == 0:
            return np.zeros_like(nbytes)
        return np.max(self.latency_s[:, None] + self.s_per_byte[:, None] * nbytes[None, :], 0)


@dataclass(frozen=True)
class OptionTable:
    """Stage options ``(group, start, stop)`` that fit in memory, as flat arrays."""

    group: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    compute_s: FloatArray
    busy_energy_j: FloatArray
    class_busy_s: FloatArray  # [option, class]: sum of busy seconds of the class's devices
    compute_full: FloatArray  # [group, a, b]: compute_s of every range (inf: no such option)
    energy_full: FloatArray  # [group, a, b]: busy_energy_j of every range


@dataclass(frozen=True)
class Tables:
    space: PlanSpace
    n_blocks: int
    options: OptionTable
    cut_bytes: FloatArray  # bytes crossing cut j (j = 1..B-1 at index j)
    moves: dict[tuple[int, int], FlowTerms]  # (group, next group) -> transfer terms
    scatter: list[FlowTerms]  # per group: stage 0's input scatter
    input_bytes: float
    gather: list[FlowTerms]  # per group: the last stage's outputs to the sink (empty flows: none)
    output_bytes: float  # bytes the last block returns (what the sink receives)
    media: tuple[str, ...]  # shared media, in the order of ``air_*`` arrays
    contention: FloatArray  # per shared medium: usable airtime fraction with 2+ flows
    idle_power_w: FloatArray  # per class
    memory_ok_any: bool  # some option fits in memory at all


def _prefix(values: list[float]) -> FloatArray:
    return np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=float))])


def _span(prefix: FloatArray) -> FloatArray:
    """``out[a, b] = prefix[b] - prefix[a]`` for every pair of cut positions."""
    return prefix[None, :] - prefix[:, None]


def _device_time_s(
    device: Device,
    share: float,
    sums: dict[str, FloatArray],
) -> FloatArray:
    """``Device.block_time_s`` of device's share of every block range (see analysis.work)."""
    flops, dense, moved = sums["flops"], sums["dense"], sums["bytes"]
    params, ops = sums["params"], sums["ops"]
    fixed = np.minimum(params, moved)
    bytes_moved = fixed + share * (moved - fixed)
    other = np.maximum(share * flops - share * dense, 0.0)
    dense = device.dense_equivalent_flops(dense, sums.get("misaligned", np.zeros_like(dense)))
    bandwidth = device.sustained_bandwidth_bytes_per_s
    dense_rate, other_rate = device.sustained_dense_flops_per_s, device.sustained_other_flops_per_s
    if "dense_bytes" not in sums:
        compute = np.maximum(share * dense / dense_rate + other / other_rate, bytes_moved / bandwidth)
    else:
        dense_fixed = np.minimum(params, sums["dense_bytes"])
        dense_b = dense_fixed + share * (sums["dense_bytes"] - dense_fixed)
        other_b = np.maximum(bytes_moved - dense_b, 0.0)
        dense_bandwidth = device.sustained_dense_bandwidth_bytes_per_s
        compute = np.maximum(share * dense / dense_rate, dense_b / dense_bandwidth) + np.maximum(
            other / other_rate, other_b / bandwidth
        )
    result: FloatArray = ops * device.op_overhead_s + compute
    return result


def _activation_peak(problem: Problem) -> FloatArray:
    """``peak[a, b]``: live activation bytes inside a stage over ``[a, b)`` (analysis.work): the
    largest input + output of one block, or the stage's own input + output."""
    out = np.array([b.out_bytes for b in problem.blocks])
    n = len(out)
    inputs = np.concatenate([[problem.input_bytes], out[:-1]])
    pair = inputs + out
    peak = np.full((n + 1, n + 1), -np.inf)
    for a in range(n):
        peak[a, a + 1 :] = np.maximum.accumulate(pair[a:])
    ends = np.concatenate([[0.0], out])  # ends[b] = out[b - 1]
    starts = np.concatenate([inputs, [0.0]])
    return np.maximum(peak, starts[:, None] + ends[None, :])


def _flow_terms(network: Network, transfers: tuple, media: tuple[str, ...], first: str) -> FlowTerms:
    moving = [t for t in transfers if t.src != t.dst]
    rates = network.flow_rates_bps([(t.src, t.dst) for t in moving]) if moving else []
    latency = np.array([network.path_latency_s(t.src, t.dst) for t in moving])
    per_byte = np.array([8.0 * t.nbytes / r for t, r in zip(moving, rates)])
    ports: dict[tuple[str, str], float] = {}
    air = np.zeros(len(media))
    air_flows = np.zeros(len(media))
    radio = 0.0
    for t in moving:
        radio += t.nbytes * (network.link(t.src).tx_j_per_byte + network.link(t.dst).rx_j_per_byte)
        for resource, seconds_per_bit in network.path(t.src, t.dst):
            load = 8.0 * t.nbytes * seconds_per_bit
            if resource[0] == "air":
                air[media.index(resource[1])] += load
                air_flows[media.index(resource[1])] += 1
            else:
                ports[resource] = ports.get(resource, 0.0) + load
    return FlowTerms(
        latency_s=latency,
        s_per_byte=per_byte,
        port_s_per_byte=max(ports.values(), default=0.0),
        first_up_s_per_byte=ports.get(("up", first), 0.0),
        air_s_per_byte=air,
        air_flows=air_flows,
        radio_j_per_byte=radio,
    )


def _options(problem: Problem, space: PlanSpace) -> tuple[OptionTable, bool]:
    blocks = problem.blocks
    sums = {
        "flops": _span(_prefix([b.flops for b in blocks])),
        "dense": _span(_prefix([b.dense for b in blocks])),
        "misaligned": _span(_prefix([getattr(b, "misaligned_flops", 0.0) for b in blocks])),
        "bytes": _span(_prefix([b.bytes for b in blocks])),
        "params": _span(_prefix([b.param_bytes for b in blocks])),
        "ops": _span(_prefix([float(b.ops) for b in blocks])),
    }
    dense_bytes = [getattr(b, "dense_bytes", None) for b in blocks]
    if all(v is not None for v in dense_bytes):
        sums["dense_bytes"] = _span(_prefix(dense_bytes))  # type: ignore[arg-type]
    peak = _activation_peak(problem)
    n = len(blocks)
    valid = np.triu(np.ones((n + 1, n + 1), dtype=bool), 1)
    cluster = problem.cluster
    cls_of = {m: c.index for c in space.classes for m in c.members}
    parts: dict[str, list[FloatArray]] = {k: [] for k in ("g", "a", "b", "c", "e", "cb")}
    any_fits = False
    compute_full = np.full((len(space.groups), n + 1, n + 1), np.inf)
    energy_full = np.zeros((len(space.groups), n + 1, n + 1))
    for gi, group in enumerate(space.groups):
        devices = space.devices_of(group)
        shares = space.shares(devices)
        compute = np.zeros((n + 1, n + 1))
        energy = np.zeros((n + 1, n + 1))
        class_busy = np.zeros((len(space.classes), n + 1, n + 1))
        fits = valid.copy()
        for name, share in zip(devices, shares):
            device = cluster.device(name)
            t = _device_time_s(device, share, sums)
            compute = np.maximum(compute, t)
            energy += (device.busy_power_w - device.idle_power_w) * t
            class_busy[cls_of[name]] += t
            fits &= sums["params"] + share * peak <= device.memory_bytes
        any_fits |= bool(fits.any())
        compute_full[gi][fits] = compute[fits]
        energy_full[gi] = energy
        a, b = np.nonzero(fits)
        parts["g"].append(np.full(a.size, gi))
        parts["a"].append(a)
        parts["b"].append(b)
        parts["c"].append(compute[a, b])
        parts["e"].append(energy[a, b])
        parts["cb"].append(class_busy[:, a, b].T)
    table = OptionTable(
        group=np.concatenate(parts["g"]).astype(int),
        start=np.concatenate(parts["a"]).astype(int),
        stop=np.concatenate(parts["b"]).astype(int),
        compute_s=np.concatenate(parts["c"]),
        busy_energy_j=np.concatenate(parts["e"]),
        class_busy_s=np.concatenate(parts["cb"]).reshape(-1, len(space.classes)),
        compute_full=compute_full,
        energy_full=energy_full,
    )
    return table, any_fits


def build_tables(problem: Problem, space: PlanSpace) -> Tables:
    """Every option's and transition's cost terms (see the module docstring)."""
    network = problem.cluster.network
    media = tuple(
        sorted(
            name
            for name in {network.link(d).medium for d in problem.cluster.device_names}
            if network.medium(name).kind == "shared"
        )
    )
    options, any_fits = _options(problem, space)
    moves: dict[tuple[int, int], FlowTerms] = {}
    for gi, group in enumerate(space.groups):
        senders = space.devices_of(group)
        send_shares = space.shares(senders)
        for gj, other in enumerate(space.groups):
            if not group.fits_with(other, space.capacity):
                continue
            receivers = space.devices_of(other, group.counts)
            transfers = _route(
                senders, send_shares, receivers, space.shares(receivers), 1.0
            )
            moves[gi, gj] = _flow_terms(network, transfers, media, senders[0])
    scatter, gather = [], []
    for group in space.groups:
        devices = space.devices_of(group)
        shares = space.shares(devices)
        source = problem.source or devices[0]
        transfers = _route((source,), (1.0,), devices, shares, 1.0)
        scatter.append(_flow_terms(network, transfers, media, devices[0]))
        to_sink = () if problem.sink is None else _route(devices, shares, (problem.sink,), (1.0,), 1.0)
        gather.append(_flow_terms(network, to_sink, media, devices[0]))
    out = np.array([b.out_bytes for b in problem.blocks])
    idle = np.array([problem.cluster.device(c.members[0]).idle_power_w for c in space.classes])
    return Tables(
        space=space,
        n_blocks=len(problem.blocks),
        options=options,
        cut_bytes=np.concatenate([[0.0], out]),
        moves=moves,
        scatter=scatter,
        input_bytes=problem.input_bytes,
        gather=gather,
        output_bytes=float(out[-1]),
        media=media,
        contention=np.array([network.medium(m).contention_efficiency for m in media]),
        idle_power_w=idle,
        memory_ok_any=any_fits,
    )


def group_index(space: PlanSpace, group: GroupType) -> int:
    return space.groups.index(group)
