"""Plan folders on disk: ``save_folder`` writes one ``stage_K.py`` per stage (the generated
source), its weights as safetensors, ``plan.txt`` and ``plan.json``; ``load_stage_module``
builds one stage back from the folder alone.

Plan folders travel between devices, so loading never unpickles: plan.json is JSON (read once,
by ``manifest.read_plan_folder``; it holds the checksums), weights are safetensors, and every
other file is checked against its SHA-256 before it is read or executed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import PlanFolderError
from ..ir.call_spec import CallSpec
from ..ir.plan import Plan
from ..ir.schedule import Schedule
from ..ir.stage_module import StageModule, instantiate_stage
from .manifest import FORMAT, PLAN_FILE, PlanFolder

__all__ = ["save_folder", "load_stage_module", "verify_files"]


def save_folder(
    path: str | Path,
    *,
    plan: Plan,
    stages: Sequence[StageModule],
    call: CallSpec,
    schedule: Schedule,
    training: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the folder (see the module doc); ``extra``: more top-level plan.json fields
    (the cluster and the QoE, for emulation and re-planning)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    entries = []
    for stage in stages:
        source_name, weights_name = f"stage_{stage.index}.py", f"stage_{stage.index}.safetensors"
        (folder / source_name).write_text(stage.code)
        tensors, aliases = _dedup_shared(stage.module.state_dict())
        save_file(tensors, str(folder / weights_name))
        for name in (source_name, weights_name):
            files[name] = _sha256(folder / name)
        entries.append(
            {
                "index": stage.index,
                "class": type(stage.module).__name__,
                "source": source_name,
                "weights": weights_name,
                "aliases": aliases,
                "input_indices": stage.input_indices,
                "output_indices": stage.output_indices,
                **{k: stage.transfers.get(k, []) for k in ("sends", "recvs", "outputs")},
                "schedule": schedule.stage_entry(stage.index),
            }
        )
    (folder / "plan.txt").write_text(plan.to_text() + "\n")
    files["plan.txt"] = _sha256(folder / "plan.txt")
    manifest = {
        "format": FORMAT,
        "plan": plan.to_json(),
        **call.to_json(),
        "training": training,
        "stages": entries,
        "files": files,
        **(extra or {}),
    }
    (folder / PLAN_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def verify_files(folder: PlanFolder, names: set[str] | None = None) -> None:
    """Check ``names`` (default: every file plan.json lists) against their SHA-256."""
    for name, expected in folder.files.items():
        if names is not None and name not in names:
            continue
        file = folder.path / name
        if not file.is_file():
            raise PlanFolderError(f"{file} is missing; the plan folder is incomplete")
        actual = _sha256(file)
        if actual != expected:
            raise PlanFolderError(
                f"{file} was modified after it was saved: SHA-256 {actual[:16]}… does not match "
                f"{expected[:16]}… recorded in {PLAN_FILE}; save the plan again"
            )


def load_stage_module(folder: PlanFolder, index: int) -> StageModule:
    """Stage ``index`` of the folder, its files checked first; devices and shares are the
    plan's. Its module is in the mode the model was compiled in (``folder.training``)."""
    entry = folder.stage(index)
    verify_files(folder, {entry.source, entry.weights})
    source_file = folder.path / entry.source
    source = source_file.read_text()
    module = instantiate_stage(source, entry.class_name, str(source_file))
    weights = load_file(str(folder.path / entry.weights))
    for alias, target in entry.aliases.items():
        weights[alias] = weights[target]
    try:
        module.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise PlanFolderError(
            f"{folder.path / entry.weights} does not fit {source_file}: {exc}"
        ) from None
    module.train(folder.training)
    stage = folder.plan.stages[index]
    return StageModule(
        index=index,
        module=module,
        input_indices=entry.input_indices,
        output_indices=entry.output_indices,
        devices=stage.devices,
        code=source,
        transfers=entry.transfers,
        shares=stage.shares,
    )


def _dedup_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory (tied embeddings): store one, alias the rest."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept = tensor.detach().contiguous()
        tensors[name] = kept.clone() if _shares(tensor, tensors) else kept
    return tensors, aliases


def _shares(tensor: torch.Tensor, kept: dict[str, torch.Tensor]) -> bool:
    storage = tensor.untyped_storage().data_ptr()
    return any(t.untyped_storage().data_ptr() == storage for t in kept.values() if t.numel())


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
