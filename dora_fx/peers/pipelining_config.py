"""What the launcher of a torch.distributed.pipelining peer run tells each of its ranks.

``PeerConfig`` is written as JSON next to the run (``spawn_ranks``) and read back by every rank
(``peers.pipelining_rank``); the model, a microbatch of example inputs and the requests travel
beside it in ``inputs_path`` (``torch.save``), since they are tensors and modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PeerConfig", "PeerTrainConfig"]


@dataclass
class PeerConfig:
    """What every rank of one peer run is told (JSON; tensors live in ``inputs_path``)."""

    inputs_path: str  # torch.save of {"model", "mb_args", "requests"}
    split_points: list[str]
    devices: list[str]  # stage k runs on devices[k]
    result_path: str
    outputs_path: str
    progress_path: str | None = None
    microbatches: int = 1
    in_flight: int = 0
    warmup: int = 3
    timeout_s: float = 60.0
    emulate: bool = False
    cluster: dict[str, Any] | None = None
    host: dict[str, Any] | None = None
    time_scale: float | None = None
    ledger_path: str | None = None
    threads: int = 1
    keep_outputs: bool = True
    # over a real network: the last stage sends its outputs' bytes to the sink's rank
    # (``pipelining_sink``) instead of a token the emulated shaper holds for them
    return_outputs: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PeerTrainConfig:
    """What every rank of one peer training run is told (JSON; the model, loss function and
    batches live in ``inputs_path``)."""

    inputs_path: str  # torch.save of {"model", "mb_args", "batches", "loss_fn"}
    split_points: list[str]
    devices: list[str]  # stage k runs on devices[k]
    result_path: str
    schedule: str = "1f1b"  # "1f1b" (Schedule1F1B) or "gpipe" (ScheduleGPipe)
    microbatches: int = 1
    lr: float = 0.01
    momentum: float = 0.0
    warmup: int = 2  # steps run first (not emulated, not measured), then undone
    progress_path: str | None = None
    timeout_s: float = 60.0
    emulate: bool = False
    cluster: dict[str, Any] | None = None
    time_scale: float | None = None
    ledger_path: str | None = None
    threads: int = 1

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)
