"""The plan space the planner searches, defined once so the solver, the baselines and the
exhaustive enumeration used to check the solver agree on it.

A plan is a pipeline of stages over contiguous block ranges. Each stage runs on a *group*: one
device, or a data-parallel group of devices that split every request's batch. The space:

* groups of one plan are disjoint (a device serves at most one stage) and devices may stay
  idle, which is how a plan saves energy;
* a group has at most ``max_group_size`` devices, never more than the batch (a sample is not
  split across devices);
* the batch shares of a group are fixed by the *share rule*: whole rows of the problem's
  batch, at least one per device (the runtimes split a batch that way), dealt one at a time
  to the device that would finish its rows first at its speed on the whole model,
  ``v_d = 1 / T_d(all blocks)`` (``T_d`` the device's roofline time); so shares are as close
  to proportional to speed as whole rows allow and do not depend on where the stage's cuts
  fall;
* inside a group, devices are listed by class (classes in order of first appearance in the
  cluster), then in cluster order; the first one receives the request and scatters the other
  shares (``sim.work`` routes the input from there). A fixed order keeps the bytes each
  device sends each device of the next stage (the overlap of their batch slices) a function
  of the two group types alone.
* on clusters with many device classes (more than ``MAX_GROUP_TYPES`` group types) mixed
  groups are limited to pairs; groups of one class keep every size.

Devices with the same specification and the same link are interchangeable (a *device class*):
the solver reasons about how many devices of each class a stage takes (a *group type*), and
`realize` turns a sequence of group types into named devices.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..analysis.problem import Problem
from ..cost_models.device import Device
from ..errors import PlanError
from ..ir.plan import Plan, Stage

__all__ = [
    "DeviceClass",
    "GroupType",
    "PlanSpace",
    "plan_space",
    "device_speed",
    "group_shares",
    "enumerate_plans",
]

# Above this many group types the space keeps singletons, pairs and same-class groups only:
# the solver's tables grow with the square of the number of group types.
MAX_GROUP_TYPES = 40


@dataclass(frozen=True)
class DeviceClass:
    """Interchangeable devices: same spec, same kind of link. ``members`` in cluster order."""

    index: int
    members: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class GroupType:
    """How many devices of each class a stage takes (``counts[c]`` of class ``c``)."""

    counts: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.counts)

    def fits_with(self, other: GroupType, capacity: Sequence[int]) -> bool:
        return all(a + b <= n for a, b, n in zip(self.counts, other.counts, capacity))


@dataclass(frozen=True)
class PlanSpace:
    """Device classes and the group types allowed on one problem."""

    classes: tuple[DeviceClass, ...]
    groups: tuple[GroupType, ...]
    max_group_size: int
    speed: dict[str, float]
    batch: int
    _shares: dict[tuple[str, ...], tuple[float, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )  # memo of ``shares``: the training planner asks for the same groups many times

    def shares(self, devices: Sequence[str]) -> tuple[float, ...]:
        """The share rule for a group of ``devices`` (see the module docstring)."""
        key = tuple(devices)
        hit = self._shares.get(key)
        if hit is None:
            hit = self._shares[key] = group_shares(devices, self.speed, self.batch)
        return hit

    @property
    def capacity(self) -> tuple[int, ...]:
        return tuple(c.size for c in self.classes)

    def canonical(self, devices: Sequence[str]) -> tuple[str, ...]:
        """``devices`` in group order: by class, then cluster order."""
        rank = {m: (c.index, i) for c in self.classes for i, m in enumerate(c.members)}
        return tuple(sorted(devices, key=rank.__getitem__))

    def devices_of(self, group: GroupType, offset: Sequence[int] | None = None) -> tuple[str, ...]:
        """Named devices for ``group``, taking each class's members after ``offset[c]``."""
        offset = offset or (0,) * len(self.classes)
        names: list[str] = []
        for cls, count, skip in zip(self.classes, group.counts, offset):
            names += cls.members[skip : skip + count]
        return tuple(names)


def device_speed(device: Device, problem: Problem) -> float:
    """Requests per second ``device`` would sustain running every block alone: ``1 / T_d``."""
    blocks = problem.blocks
    seconds = sum(
        device.block_time_s(
            b.flops, b.dense, b.bytes, b.ops, getattr(b, "dense_bytes", None),
            getattr(b, "misaligned_flops", 0.0),
        )
        for b in blocks
    )
    return 1.0 / seconds if seconds > 0 else 1.0


def group_shares(devices: Sequence[str], speed: dict[str, float], batch: int) -> tuple[float, ...]:
    """The share rule: whole rows of ``batch`` (at least one each), each further row going to
    the device that would finish its rows first, which minimizes the slowest device's time;
    as shares summing to exactly 1."""
    if batch < len(devices):
        raise PlanError(
            f"a batch of {batch} cannot be split over the {len(devices)} devices "
            f"{', '.join(devices)}: a data-parallel group needs a row per device"
        )
    rows = [1] * len(devices)
    for _ in range(batch - len(devices)):
        i = min(range(len(devices)), key=lambda k: (rows[k] + 1) / speed[devices[k]])
        rows[i] += 1
    shares = [r / batch for r in rows]
    shares[-1] = 1.0 - sum(shares[:-1])
    return tuple(shares)


def _class_key(problem: Problem, device: Device) -> tuple[object, ...]:
    spec = device.to_json()
    spec.pop("name")
    link = problem.cluster.network.link(device.name).to_json()
    link.pop("device")
    # JSON text, not item tuples: specs may hold lists (a calibrated bandwidth curve)
    return (json.dumps(spec, sort_keys=True), json.dumps(link, sort_keys=True))


def _classes(problem: Problem) -> tuple[DeviceClass, ...]:
    """Classes of interchangeable devices; the problem's source and sink are classes of their
    own (requests enter and results leave there, so they are not interchangeable), the
    source's first, so a group holding it lists it first."""
    ends = [d for d in (problem.source, problem.sink) if d is not None]
    by_key: dict[tuple[object, ...], list[str]] = {}
    for name in dict.fromkeys(ends):
        by_key[("end", name)] = [name]
    for device in problem.cluster.devices:
        if device.name not in ends:
            by_key.setdefault(_class_key(problem, device), []).append(device.name)
    return tuple(DeviceClass(i, tuple(m)) for i, m in enumerate(by_key.values()))


def plan_space(problem: Problem, max_group_size: int | None = None) -> PlanSpace:
    """The plan space of ``problem`` (see the module docstring)."""
    classes = _classes(problem)
    n_devices = len(problem.cluster.devices)
    limit = n_devices if max_group_size is None else max_group_size
    if limit < 1:
        raise PlanError(f"max_group_size must be >= 1, got {max_group_size!r}")
    limit = min(limit, n_devices, problem.batch)
    ranges = [range(c.size + 1) for c in classes]
    groups = [
        GroupType(tuple(counts))
        for counts in itertools.product(*ranges)
        if 1 <= sum(counts) <= limit
    ]
    if len(groups) > MAX_GROUP_TYPES:
        groups = [
            g for g in groups if g.size <= 2 or sum(1 for n in g.counts if n) == 1
        ]
    groups.sort(key=lambda g: (g.size, tuple(-n for n in g.counts)))
    speed = {d.name: device_speed(d, problem) for d in problem.cluster.devices}
    return PlanSpace(classes, tuple(groups), limit, speed, problem.batch)


def make_plan(
    name: str, problem: Problem, space: PlanSpace, stages: Sequence[tuple[int, int, GroupType]]
) -> Plan:
    """A plan from ``(block_start, block_stop, group type)`` stages, realized on named devices
    (each class's members taken in cluster order, stage after stage)."""
    used = [0] * len(space.classes)
    built = []
    for index, (start, stop, group) in enumerate(stages):
        devices = space.devices_of(group, used)
        if len(devices) != group.size:
            raise PlanError(
                f"plan {name!r} stage {index} needs {group.counts} devices per class but the "
                f"cluster has {space.capacity}"
            )
        used = [u + n for u, n in zip(used, group.counts)]
        ordered = space.canonical(devices)
        shares = space.shares(ordered)
        built.append(Stage(index, start, stop, ordered, shares))
    return Plan(name, tuple(built), batch=problem.batch)


def _ordered_groups(
    devices: tuple[str, ...], max_size: int, count: int
) -> Iterator[tuple[tuple[str, ...], ...]]:
    """Sequences of ``count`` disjoint non-empty device groups (cluster order inside each)."""
    if count == 0:
        yield ()
        return
    for size in range(1, max_size + 1):
        for first in itertools.combinations(devices, size):
            rest = tuple(d for d in devices if d not in first)
            for tail in _ordered_groups(rest, max_size, count - 1):
                yield (first, *tail)


def enumerate_plans(problem: Problem, space: PlanSpace | None = None) -> Iterator[Plan]:
    """Every plan of the space on named devices (exhaustive; for checks on small problems)."""
    space = space or plan_space(problem)
    allowed = {g.counts for g in space.groups}
    by_name = {m: c.index for c in space.classes for m in c.members}
    n_blocks = len(problem.blocks)
    names = space.canonical(problem.cluster.device_names)
    for n_stages in range(1, min(n_blocks, len(names)) + 1):
        for groups in _ordered_groups(names, space.max_group_size, n_stages):
            if any(_counts(g, by_name, len(space.classes)) not in allowed for g in groups):
                continue
            for cuts in itertools.combinations(range(1, n_blocks), n_stages - 1):
                bounds = (0, *cuts, n_blocks)
                stages = tuple(
                    Stage(k, bounds[k], bounds[k + 1], g, space.shares(g))
                    for k, g in enumerate(groups)
                )
                yield Plan("exhaustive", stages, batch=problem.batch)


def _counts(group: tuple[str, ...], by_name: dict[str, int], n_classes: int) -> tuple[int, ...]:
    counts = [0] * n_classes
    for d in group:
        counts[by_name[d]] += 1
    return tuple(counts)
