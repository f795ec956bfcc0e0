"""Distributed training, config: what every rank of one training run is told (``TrainConfig``,
JSON so the launcher can hand it to processes), and the names of the run folder's files."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["TrainConfig", "KILL_ENV", "DATA_FILE", "LOSS_FILE", "RESULT_FILE", "build_optimizer"]

KILL_ENV = "DORA_TRAIN_KILL"  # "RANK:STEP": that rank kills itself (SIGKILL) as the step starts
DATA_FILE = "data.pt"  # torch.save: per step, (flat inputs, target leaves)
LOSS_FILE = "loss.pkl"  # the pickled loss_fn
RESULT_FILE = "result.pt"


@dataclass
class TrainConfig:
    """``steps``: the run ends after this many steps in all (a resume runs the missing ones:
    ``start_step`` to ``steps - 1``). ``optimizer``: the class (``module:qualname``) and the
    keyword arguments (one param group) each rank builds over its stage's parameters.
    ``batches``: each step's rows (the loss weights' denominator). ``target_spec``: the targets' pytree (``torch.utils._pytree.treespec_dumps``).
    ``checkpoint_every``: write a checkpoint after every N-th step (and the last), into
    ``checkpoint_dir``; ``resume_dir``: the step folder every rank loads first.
    ``emulate``: compute stretched and transfers shaped as for inference runs."""

    plan_dir: str
    run_dir: str
    steps: int
    optimizer: dict[str, Any]
    target_spec: str
    microbatches: int
    batches: list[int]  # rows of each step's batch, from ``start_step`` on
    policy: str = "1f1b"
    start_step: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume_dir: str | None = None
    plan_sha256: str = ""
    timeout_s: float = 60.0
    device: str = "cpu"
    threads: int = 1
    emulate: bool = False
    host: dict[str, Any] | None = None
    time_scale: float | None = None
    compute_reference: str = "measured"
    ledger_path: str | None = None
    sys_path: list[str] | None = None  # the caller's, so ranks import its loss's module

    @property
    def result_path(self) -> str:
        return f"{self.run_dir}/{RESULT_FILE}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)


def build_optimizer(recipe: dict[str, Any], params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``recipe`` names (``TrainConfig.optimizer``) over ``params``."""
    module_name, _, qualname = recipe["class"].partition(":")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls(params, **recipe["kwargs"])  # type: ignore[no-any-return]
