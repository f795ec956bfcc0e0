"""``load``: a plan folder back as a runnable pipeline, from the folder alone (no user model
class, nothing unpickled; see ``artifact``)."""

from __future__ import annotations

from pathlib import Path

from ..artifact.folder import load_stage_module, verify_files
from ..artifact.manifest import PlanFolder, read_plan_folder
from .local import LocalPipeline

__all__ = ["LoadedModel", "load"]


class LoadedModel(LocalPipeline):
    """A pipeline rebuilt from a plan folder; call it like the original model."""

    def __init__(self, folder: PlanFolder) -> None:
        stages = [load_stage_module(folder, k) for k in range(len(folder.stages))]
        super().__init__(stages, folder.call, folder.schedule, folder.training)
        self.folder = folder
        self.plan = folder.plan


def load(path: str | Path) -> LoadedModel:
    """Load the plan folder at ``path`` (every file checked against plan.json first)."""
    folder = read_plan_folder(path)
    verify_files(folder)
    return LoadedModel(folder)
