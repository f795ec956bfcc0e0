"""Training checkpoints on disk: per rank, its stage's weights, its optimizer's state and the
step, hashed like plan folders.

Layout (``checkpoint_dir/step_00000004/`` after 4 completed steps)::

    rank_0.safetensors   the rank's weights under the model's state_dict keys
    rank_0.optim.pt      torch.save of the optimizer's state_dict (read with weights_only=True)
    rank_0.json          the manifest: format, step, rank, stage, device, world size, plan.json's
                         SHA-256 and a SHA-256 per file

Each file is written under a temporary name and renamed into place, the manifest last, so a
rank's part of a step is there whole or not at all; a step is *complete* when every rank's
manifest is there. ``latest_complete`` finds the newest complete step (a run killed while
writing one falls back to the one before); ``check_step`` verifies a step folder before a
resume: every rank's manifest, all from the same step and plan, each file's SHA-256
(``CheckpointError``: "corrupted checkpoint" naming the file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import PlanFolderError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "RankCheckpoint",
    "check_step",
    "latest_complete",
    "read_rank",
    "step_dir",
    "write_rank",
]

CHECKPOINT_FORMAT = "dora_fx.checkpoint/1"
_STEP = re.compile(r"step_(\d{8})")


class CheckpointError(PlanFolderError):
    """A checkpoint that cannot be resumed from: missing, corrupted, or from another plan."""


@dataclass(frozen=True)
class RankCheckpoint:
    """What one rank's manifest says."""

    step: int
    rank: int
    stage: int
    device: str
    world: int
    plan_sha256: str
    files: dict[str, str]  # file name -> SHA-256


def step_dir(checkpoint_dir: str | Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"step_{step:08d}"


def write_rank(
    checkpoint_dir: str | Path,
    info: RankCheckpoint,
    weights: Mapping[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> Path:
    """Write one rank's part of step ``info.step`` (files first, each renamed into place,
    then the manifest); returns the manifest's path."""
    folder = step_dir(checkpoint_dir, info.step)
    folder.mkdir(parents=True, exist_ok=True)
    names = _names(info.rank)
    tensors = {k: t.detach().to("cpu").contiguous().clone() for k, t in weights.items()}
    _atomic(folder / names["weights"], lambda p: save_file(tensors, str(p)))
    _atomic(folder / names["optimizer"], lambda p: torch.save(optimizer_state, p))
    files = {n: sha256(folder / n) for n in (names["weights"], names["optimizer"])}
    manifest = {"format": CHECKPOINT_FORMAT, **{**info.__dict__, "files": files}}
    text = json.dumps(manifest, indent=2) + "\n"
    _atomic(folder / names["manifest"], lambda p: Path(p).write_text(text))
    return folder / names["manifest"]


def read_rank(folder: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One rank's weights (model keys) and optimizer state, its files checked first."""
    info = _manifest(folder, rank)
    _verify(folder, info)
    names = _names(rank)
    weights = load_file(str(folder / names["weights"]))
    optimizer = torch.load(folder / names["optimizer"], weights_only=True)
    return weights, optimizer


def latest_complete(checkpoint_dir: str | Path, world: int) -> Path | None:
    """The newest step folder every one of ``world`` ranks wrote its manifest in."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    steps = sorted((p for p in root.iterdir() if _STEP.fullmatch(p.name)), reverse=True)
    for folder in steps:
        if all((folder / _names(r)["manifest"]).is_file() for r in range(world)):
            return folder
    return None


def check_step(folder: Path, ranks: Sequence[tuple[int, int, str]], plan_sha256: str) -> int:
    """Verify a step folder for a resume by ``ranks`` (rank, stage, device each): every
    rank's manifest is there, all from one step and this plan, and every file matches its
    SHA-256. Returns the step."""
    infos = [_manifest(folder, rank) for rank, _, _ in ranks]
    steps = {i.step for i in infos}
    if len(steps) != 1:
        by_rank = ", ".join(f"rank {i.rank}: step {i.step}" for i in infos)
        raise CheckpointError(
            f"the ranks' checkpoints in {folder} disagree on the step ({by_rank}); every rank "
            "must resume from the same step: resume from a step folder all ranks completed"
        )
    for info, (rank, stage, device) in zip(infos, ranks):
        if (info.stage, info.device, info.world) != (stage, device, len(ranks)):
            raise CheckpointError(
                f"{folder / _names(rank)['manifest']} is rank {rank} of stage {info.stage} on "
                f"{info.device!r} in a world of {info.world}, but this plan runs rank {rank} as "
                f"stage {stage} on {device!r} in a world of {len(ranks)}: resume with the plan "
                "the checkpoint was written by"
            )
        if info.plan_sha256 != plan_sha256:
            raise CheckpointError(
                f"{folder} was written by another plan (plan.json SHA-256 {info.plan_sha256[:16]}… "
                f"vs {plan_sha256[:16]}…): resume with the plan the checkpoint was written by"
            )
        _verify(folder, info)
    return steps.pop()


def sha256(file: str | Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _names(rank: int) -> dict[str, str]:
    return {
        "weights": f"rank_{rank}.safetensors",
        "optimizer": f"rank_{rank}.optim.pt",
        "manifest": f"rank_{rank}.json",
    }


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _manifest(folder: Path, rank: int) -> RankCheckpoint:
    path = folder / _names(rank)["manifest"]
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: rank {rank} did not complete the checkpoint of {folder.name}; "
            "resume from the checkpoint directory (its newest complete step is taken) or an "
            "earlier step"
        )
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        return RankCheckpoint(
            int(raw["step"]), int(raw["rank"]), int(raw["stage"]), str(raw["device"]),
            int(raw["world"]), str(raw["plan_sha256"]), dict(raw["files"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"corrupted checkpoint: {path} is not a valid manifest ({exc})") from None


def _verify(folder: Path, info: RankCheckpoint) -> None:
    for name, expected in info.files.items():
        file = folder / name
        if Path(name).name != name or not file.is_file():
            raise CheckpointError(f"corrupted checkpoint: {file} is missing")
        actual = sha256(file)
        if actual != expected:
            raise CheckpointError(
                f"corrupted checkpoint: {file} has SHA-256 {actual[:16]}… but its manifest "
                f"records {expected[:16]}…; resume from another step"
            )
