"""Distributed runtime, wiring: which rank runs which stage, and what each stage sends where.

Ranks follow the plan (``rank_table``: stage major, then the devices of a data-parallel group).
``StageWiring`` is what plan.json says about every stage: its ranks, the batch dims of the
tensors it sends and receives, the user inputs it uses and the outputs it returns, and the
plan's source and sink devices (rank 0 stands for both: it releases the requests and collects
the results, and their transfers are shaped as from the source and to the sink).
Data-parallel groups split every tensor with a ``batch_dim`` by the group's shares
(``ir.batch_split``). ``transport`` moves the tensors along this wiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...artifact.manifest import PlanFolder
from ...ir.plan import Plan

__all__ = ["RankInfo", "rank_table", "StageWiring"]


@dataclass(frozen=True)
class RankInfo:
    rank: int
    stage: int
    slot: int  # position in the stage's data-parallel group
    device: str
    shares: tuple[float, ...]  # the group's shares

    def describe(self) -> str:
        group = f" slot {self.slot}" if len(self.shares) > 1 else ""
        return f"rank {self.rank} (stage {self.stage}{group} on device {self.device!r})"


def rank_table(plan: Plan) -> list[RankInfo]:
    """Ranks in stage order, then device order within a stage."""
    table: list[RankInfo] = []
    for stage in plan.stages:
        for slot, device in enumerate(stage.devices):
            table.append(RankInfo(len(table), stage.index, slot, device, stage.shares))
    return table


@dataclass
class StageWiring:
    """What plan.json says about every stage: its ranks and its tensors' batch dims."""

    table: list[RankInfo]
    send_dims: dict[int, dict[tuple[int, int], int | None]]  # stage -> (peer, tag) -> batch dim
    recv_dims: dict[int, dict[tuple[int, int], int | None]]
    output_dims: dict[int, int | None]  # user output position -> batch dim
    input_stages: dict[int, list[int]]  # stage -> user input positions it uses
    output_stages: dict[int, list[int]]  # stage -> user output positions it returns
    source: str | None = None  # the device requests come from (None: rank 0's)
    sink: str | None = None  # the device results go to (None: they stay where computed)

    @classmethod
    def from_folder(cls, folder: PlanFolder) -> StageWiring:
        send_dims, recv_dims, output_dims = {}, {}, {}
        inputs, outputs = {}, {}
        for entry in folder.stages:
            index, transfers = entry.index, entry.transfers
            send_dims[index] = {(s["peer"], s["tag"]): _batch_dim(s) for s in transfers["sends"]}
            recv_dims[index] = {(r["peer"], r["tag"]): _batch_dim(r) for r in transfers["recvs"]}
            for position, spec in zip(entry.output_indices, transfers["outputs"]):
                output_dims[position] = None if spec is None else spec.get("batch_dim")
            inputs[index] = list(entry.input_indices)
            outputs[index] = list(entry.output_indices)
        table = rank_table(folder.plan)
        return cls(table, send_dims, recv_dims, output_dims, inputs, outputs, *folder.ends)

    @property
    def num_stages(self) -> int:
        return 1 + max(r.stage for r in self.table)

    def ranks_of(self, stage: int) -> list[RankInfo]:
        return [r for r in self.table if r.stage == stage]

    def links(self) -> set[tuple[int, int]]:
        """Every (sending rank, receiving rank) pair that can carry a tensor."""
        pairs: set[tuple[int, int]] = set()
        for info in self.table:
            for peer, _ in self.send_dims[info.stage]:
                pairs.update((info.rank, r.rank) for r in self.ranks_of(peer))
            if self.input_stages[info.stage]:
                pairs.add((0, info.rank))
            if self.output_stages[info.stage]:
                pairs.add((info.rank, 0))
        return {(a, b) for a, b in pairs if a != b}


def _batch_dim(entry: dict[str, Any]) -> int | None:
    spec = entry.get("tensor")
    return None if spec is None else spec.get("batch_dim")


