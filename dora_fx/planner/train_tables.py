"""The planner's tables for a training problem at ``m`` microbatches: the inference tables
(``tables``, ``dp.dense``) with every term made a training iteration's, per microbatch.

* option ``(g, a, b)``: ``C = max_d (F_d + B_d)`` with ``F``, ``B`` the roofline times of
  device ``d``'s share ``s_d / m`` of the blocks' forward and backward work, the loss's in
  ``B`` of a range that ends the model (exactly ``analysis.training.train_work``), busy energy ``sum_d (P_busy - P_idle)(F_d + B_d)``; it
  exists when the device's training memory fits with one microbatch in flight
  (``fits_any``: a relaxation, every plan's stages pass it) and is marked ``fits_all`` when it
  fits with ``m`` in flight (GPipe's count, the most 1F1B ever holds);
* transition over cut ``j``: the activation's transfer (``bytes_j / m``) plus its gradient's
  over the reverse routes: step times and airtime, flows and radio add; the port term is the
  larger of the two directions' busiest port (a lower bound on the combined busiest port);
* the weight update of an option, ``U[g, a, b]``: the ring all-reduce of its gradients over
  its group, affine in the bytes (``cost_models.collectives``, one coefficient pair per
  group), plus the optimizer step on the group's slowest device (exactly
  ``analysis.training``'s ``A_k + O_k``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..analysis.problem import Problem
from ..analysis.training import loss_s, training_spec, without_sink
from ..analysis.work import _route
from ..cost_models.collectives import ring_allreduce_s
from ..cost_models.train_costs import OPTIMIZERS, optimizer_step_costs
from .dp import Dense, dense
from .space import PlanSpace
from .tables import FlowTerms, Tables, _device_time_s, _flow_terms, _prefix, _span, build_tables

__all__ = ["TrainTables", "TrainBase", "train_base", "train_tables"]


@dataclass(frozen=True)
class TrainBase:
    """What does not depend on the microbatch count: the inference tables of the problem
    without a sink, the gradients' reverse transfer terms, per-range sums."""

    tables: Tables
    back: Tables  # the same tables with the reverse (gradient) moves
    sums: dict[str, np.ndarray]
    back_sums: dict[str, np.ndarray]
    acts: np.ndarray  # [a, b] saved activation bytes of the range, per batch
    state: np.ndarray  # [a, b] weights + grads + optimizer state
    grads: np.ndarray  # [a, b]
    ring: np.ndarray  # [G, 2]: all-reduce seconds = ring[g, 0] + ring[g, 1] * bytes
    optimizer: np.ndarray  # [G, a, b]: one optimizer step, slowest device of the group


@dataclass(frozen=True)
class TrainTables:
    microbatches: int
    d: Dense  # per-microbatch terms (compute_s inf where memory does not fit one microbatch)
    fits_all: np.ndarray  # [G, a, b]: fits with ``microbatches`` in flight
    update_s: np.ndarray  # [G, a, b]: all-reduce + optimizer step after the drain


def train_base(problem: Problem, space: PlanSpace) -> TrainBase:
    spec = training_spec(problem)
    plain = without_sink(problem)
    tables = build_tables(plain, space)
    network = problem.cluster.network
    back: dict[tuple[int, int], FlowTerms] = {}
    for gi, group in enumerate(space.groups):
        senders = space.devices_of(group)
        for gj, other in enumerate(space.groups):
            if (gi, gj) not in tables.moves:
                continue
            receivers = space.devices_of(other, group.counts)
            route = _route(receivers, space.shares(receivers), senders, space.shares(senders), 1.0)
            back[gi, gj] = _flow_terms(network, route, tables.media, receivers[0])
    blocks = problem.blocks
    sums = {
        "flops": _span(_prefix([b.flops for b in blocks])),
        "dense": _span(_prefix([b.dense for b in blocks])),
        "misaligned": _span(_prefix([b.misaligned_flops for b in blocks])),
        "bytes": _span(_prefix([b.bytes for b in blocks])),
        "params": _span(_prefix([b.param_bytes for b in blocks])),
        "ops": _span(_prefix([float(b.ops) for b in blocks])),
    }
    if all(b.dense_bytes is not None for b in blocks):
        sums["dense_bytes"] = _span(_prefix([b.dense_bytes for b in blocks]))  # type: ignore[misc]
    back_sums = {
        "flops": _span(_prefix([b.backward_flops for b in blocks])),
        "dense": _span(_prefix([b.backward_dense for b in blocks])),
        "bytes": _span(_prefix([b.backward_bytes for b in blocks])),
        "params": sums["params"],
        "ops": _span(_prefix([float(b.backward_kernels) for b in blocks])),
    }
    if all(b.backward_dense_bytes is not None for b in blocks):
        back_sums["dense_bytes"] = _span(_prefix([b.backward_dense_bytes for b in blocks]))  # type: ignore[misc]
    grads = _span(_prefix([b.grad_bytes for b in blocks]))
    state = sums["params"] + grads * (1.0 + OPTIMIZERS[spec.optimizer])
    ring = np.zeros((len(space.groups), 2))
    for gi, group in enumerate(space.groups):
        devices = space.devices_of(group)
        if len(devices) > 1:
            at0 = ring_allreduce_s(network, devices, 1e-9)
            ring[gi] = (at0, (ring_allreduce_s(network, devices, 1e9) - at0) / 1e9)
    tensors = _span(_prefix([float(b.grad_tensors) for b in blocks]))
    optimizer = np.zeros((len(space.groups), *grads.shape))
    for gi, group in enumerate(space.groups):
        for name in space.devices_of(group):
            step = _optimizer_s(problem.cluster.device(name), spec.optimizer, grads, tensors)
            optimizer[gi] = np.maximum(optimizer[gi], step)
    return TrainBase(
        tables=tables,
        back=replace(tables, moves=back),
        sums=sums,
        back_sums=back_sums,
        acts=_span(_prefix([b.activation_bytes for b in blocks])),
        state=state,
        grads=grads,
        ring=ring,
        optimizer=optimizer,
    )


def train_tables(problem: Problem, space: PlanSpace, base: TrainBase, microbatches: int) -> TrainTables:
    """The training terms at ``microbatches`` (see the module docstring)."""
    m = microbatches
    n = len(problem.blocks)
    valid = np.triu(np.ones((n + 1, n + 1), dtype=bool), 1)
    groups = space.groups
    compute_full = np.full((len(groups), n + 1, n + 1), np.inf)
    energy_full = np.zeros((len(groups), n + 1, n + 1))
    fits_all = np.zeros((len(groups), n + 1, n + 1), dtype=bool)
    allreduce = np.zeros((len(groups), n + 1, n + 1))
    for gi, group in enumerate(groups):
        devices = space.devices_of(group)
        shares = space.shares(devices)
        compute = np.zeros((n + 1, n + 1))
        energy = np.zeros((n + 1, n + 1))
        fit_one, fit_all = valid.copy(), valid.copy()
        for name, share in zip(devices, shares, strict=True):
            device = problem.cluster.device(name)
            f = share / m
            t = _device_time_s(device, f, base.sums) + _backward_s(device, f, base.back_sums)
            t[:, n] += loss_s(device, f, problem.blocks[-1].out_bytes)  # the last stage's
            compute = np.maximum(compute, t)
            energy += (device.busy_power_w - device.idle_power_w) * t
            fit_one &= base.state + f * base.acts <= device.memory_bytes
            fit_all &= base.state + m * f * base.acts <= device.memory_bytes
        compute_full[gi][fit_one] = compute[fit_one]
        energy_full[gi] = energy
        fits_all[gi] = fit_all
        allreduce[gi] = base.ring[gi, 0] * (base.grads > 0) + base.ring[gi, 1] * base.grads
        allreduce[gi] += base.optimizer[gi]
    options = replace(base.tables.options, compute_full=compute_full, energy_full=energy_full)
    cut, x_in = base.tables.cut_bytes / m, base.tables.input_bytes / m
    fwd = dense(replace(base.tables, options=options, cut_bytes=cut, input_bytes=x_in))
    bwd = dense(replace(base.back, options=options, cut_bytes=cut, input_bytes=x_in))
    d = replace(
        fwd,
        move_s=fwd.move_s + bwd.move_s,
        move_port_s=np.maximum(fwd.move_port_s, bwd.move_port_s),
        move_air_s=fwd.move_air_s + bwd.move_air_s,
        move_air_flows=fwd.move_air_flows + bwd.move_air_flows,
        move_radio_j=fwd.move_radio_j + bwd.move_radio_j,
    )
    return TrainTables(m, d, fits_all, allreduce)


def _optimizer_s(device, optimizer: str, grads: np.ndarray, tensors: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``analysis.training._optimizer_s`` of every range: the roofline of the step's totals."""
    flops, moved, kernels = optimizer_step_costs(optimizer, grads, tensors)  # type: ignore[arg-type]
    compute = np.maximum(
        flops / device.sustained_other_flops_per_s, moved / device.sustained_bandwidth_bytes_per_s
    )
    out: np.ndarray = np.where(grads > 0, kernels * device.op_overhead_s + compute, 0.0)
    return out


def _backward_s(device, share: float, sums: dict[str, np.ndarray]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The backward's roofline time, priced as the forward (``_device_time_s``: one roofline
    per class when the dense bytes are known, as ``analysis.training``), no per-op overhead
    where a range has no backward work."""
    out: np.ndarray = np.where(
        (sums["flops"] > 0) | (sums["bytes"] > 0), _device_time_s(device, share, sums), 0.0
    )
    return out
