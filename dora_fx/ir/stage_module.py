"""``StageModule``: one stage as the runtimes see it, whoever built it (the compiler's
``codegen`` pass, or a plan folder read back by ``artifact``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StageModule"]


@dataclass
class StageModule:
    """One stage as the runtimes see it: a module, its wiring, and its readable source."""

    index: int
    module: torch.nn.Module
    input_indices: list[int]
    output_indices: list[int]
    devices: tuple[str, ...]
    code: str = ""
    node_names: list[str] = field(default_factory=list)
    # sends / recvs / outputs with dtype, shape and batch dim (see insert_comm.stage_transfers)
    transfers: dict[str, Any] = field(default_factory=dict)
    shares: tuple[float, ...] = (1.0,)  # batch shares of a data-parallel group, one per device

    @property
    def schedule_entry(self) -> dict[str, Any] | None:
        return self.transfers.get("schedule")

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.module.state_dict().values())


