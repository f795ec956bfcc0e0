"""The one reader of plan.json: ``read_plan_folder(path) -> PlanFolder``.

plan.json is JSON (never executed or unpickled) and holds the SHA-256 of every other file of
the folder, so it is the one file read before any check; it is parsed and validated once, into
typed parts: the plan, the call the model was compiled for (``CallSpec``), every stage's entry
(its files, its wiring to the caller's inputs and outputs, what it sends and receives), and the
compiled schedule as one ``Schedule`` object. Every consumer (the in-process loader, the
launcher, each rank, ``dora-fx simulate --plan``) reads a folder through it, once.

Format ``dora_fx.plan/2``: stage files define one method per schedule segment (``SEGMENTS``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PlanFolderError
from ..ir.call_spec import CallSpec
from ..ir.plan import Plan
from ..ir.schedule import Schedule, ScheduleError

__all__ = ["FORMAT", "PLAN_FILE", "PlanFolder", "StageEntry", "read_plan_folder"]

FORMAT = "dora_fx.plan/2"
PLAN_FILE = "plan.json"
_FIELDS = ("plan", "in_spec", "out_spec", "inputs", "stages", "files")


@dataclass(frozen=True)
class StageEntry:
    """One stage of a saved plan: its files, wiring and transfers (``sends``, ``recvs``,
    ``outputs``: dtype, symbolic shape and batch dim of each; see ``insert_comm``)."""

    index: int
    class_name: str
    source: str
    weights: str
    aliases: dict[str, str]
    input_indices: list[int]
    output_indices: list[int]
    transfers: dict[str, list[Any]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageEntry:
        return cls(
            index=data["index"],
            class_name=data["class"],
            source=data["source"],
            weights=data["weights"],
            aliases=dict(data.get("aliases", {})),
            input_indices=list(data["input_indices"]),
            output_indices=list(data["output_indices"]),
            transfers={k: list(data.get(k, [])) for k in ("sends", "recvs", "outputs")},
        )


@dataclass(frozen=True)
class PlanFolder:
    """A plan folder as read from its plan.json (see the module doc)."""

    path: Path
    plan: Plan
    call: CallSpec
    stages: tuple[StageEntry, ...]
    schedule: Schedule
    files: dict[str, str]  # file name -> SHA-256
    cluster: dict[str, Any] | None = None  # Cluster JSON, for emulation and re-planning
    qoe: dict[str, Any] | None = None
    training: bool = False  # the mode the model was compiled in
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ends(self) -> tuple[str | None, str | None]:
        """(source, sink): where requests enter and where results must go, as planned (the
        QoE's, else the cluster's ``source``; None: the first stage / where computed)."""
        qoe, cluster = self.qoe or {}, self.cluster or {}
        source = qoe.get("source") or cluster.get("source")
        return source, qoe.get("sink") or cluster.get("source")

    def stage(self, index: int) -> StageEntry:
        if not 0 <= index < len(self.stages):
            raise PlanFolderError(
                f"{self.path} holds stages 0..{len(self.stages) - 1}, not stage {index}; the "
                f"plan has {len(self.stages)} stages"
            )
        return self.stages[index]


def read_plan_folder(path: str | Path) -> PlanFolder:
    """Read and validate ``path/plan.json`` (see the module doc)."""
    folder = Path(path)
    plan_file = folder / PLAN_FILE
    if not plan_file.is_file():
        raise PlanFolderError(f"{folder} is not a plan folder: {PLAN_FILE} is missing")
    try:
        raw = json.loads(plan_file.read_text())
    except json.JSONDecodeError as exc:
        raise PlanFolderError(f"{plan_file} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        hint = " (saved by an older dora_fx: compile and save the model again)" if (
            isinstance(found, str) and found.startswith("dora_fx.plan/")
        ) else ""  # fmt: skip
        raise PlanFolderError(f"{plan_file}: expected format {FORMAT!r}, found {found!r}{hint}")
    for key in _FIELDS:
        if key not in raw:
            raise PlanFolderError(f"{plan_file} lacks the field {key!r}")
    try:
        return _parse(folder, raw)
    except (KeyError, TypeError, ValueError) as exc:  # PlanFolderError is an OSError
        raise PlanFolderError(f"{plan_file} is malformed: {type(exc).__name__}: {exc}") from None


def _parse(folder: Path, raw: dict[str, Any]) -> PlanFolder:
    plan = Plan.from_json(raw["plan"])
    stages = tuple(StageEntry.from_json(s) for s in raw["stages"])
    if [s.index for s in stages] != list(range(len(plan.stages))):
        raise PlanFolderError(
            f"{folder / PLAN_FILE} lists stages {[s.index for s in stages]} for a plan of "
            f"{len(plan.stages)} stages"
        )
    named = {name for s in stages for name in (s.source, s.weights)}
    unlisted = sorted(named - set(raw["files"]))
    if unlisted:
        raise PlanFolderError(f"{folder / PLAN_FILE} names {unlisted} without a checksum")
    for name in raw["files"]:
        if Path(name).name != name:
            raise PlanFolderError(f"{PLAN_FILE} names {name!r}, which is outside the folder")
    try:
        schedule = Schedule.from_stage_entries([s["schedule"] for s in raw["stages"]])
    except (KeyError, ScheduleError) as exc:
        raise PlanFolderError(f"{folder / PLAN_FILE}: no valid schedule ({exc})") from None
    call = CallSpec.from_json(raw)
    return PlanFolder(
        path=folder,
        plan=plan,
        call=call,
        stages=stages,
        schedule=schedule,
        files=dict(raw["files"]),
        cluster=raw.get("cluster"),
        qoe=raw.get("qoe"),
        training=bool(raw.get("training", False)),
        raw=raw,
    )
