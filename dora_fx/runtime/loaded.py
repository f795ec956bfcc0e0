"""Plan folders: ``save`` writes one importable ``stage_K.py`` per stage, its weights as
safetensors, and ``plan.json``; ``load`` rebuilds a runnable pipeline from the folder alone.

Plan folders travel between devices, so loading never unpickles: plan.json is JSON, weights are
safetensors, and every file plan.json names is checked against its recorded SHA-256 before it
is read or imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact.folder import _load_spec, _load_stage, input_checks, read_manifest, verify_files
from ..ir.plan import Plan
from ..ir.stage_module import StageModule
from .local import LocalPipeline

__all__ = ["LoadedModel", "load"]


class LoadedModel(LocalPipeline):
    """A pipeline rebuilt from a plan folder; call it like the original model."""

    def __init__(self, folder: Path, manifest: dict[str, Any], stages: list[StageModule]):
        meta, shapes = input_checks(manifest)
        super().__init__(
            stages,
            _load_spec(manifest["in_spec"]),
            _load_spec(manifest["out_spec"]),
            meta,
            [None if m is None else m.get("batch_dim") for m in manifest["inputs"]],
            shapes,
        )
        self.folder = folder
        self.manifest = manifest
        self.plan = Plan.from_json(manifest["plan"])


def load(path: str | Path) -> LoadedModel:
    folder = Path(path)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    plan = Plan.from_json(manifest["plan"])
    stages = [_load_stage(folder, entry, plan) for entry in manifest["stages"]]
    return LoadedModel(folder, manifest, stages)


