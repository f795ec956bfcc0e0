"""Plan folders: ``save`` writes one importable ``stage_K.py`` per stage, its weights as
safetensors, and ``plan.json``; ``load`` rebuilds a runnable pipeline from the folder alone.

Plan folders travel between devices, so loading never unpickles: plan.json is JSON, weights are
safetensors, and every file plan.json names is checked against its recorded SHA-256 before it
is read or imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from safetensors.torch import load_file, save_file

from ..errors import PlanFolderError
from ..ir.plan import Plan
from ..ir.stage_module import StageModule

__all__ = ["FORMAT", "PLAN_FILE", "save_folder", "read_manifest", "verify_files", "load_stage", "input_checks"]

FORMAT = "dora_fx.plan/1"
PLAN_FILE = "plan.json"


def save_folder(
    path: str | Path,
    *,
    plan: Plan,
    stages: list[StageModule],
    in_spec: pytree.TreeSpec,
    out_spec: pytree.TreeSpec,
    input_meta: list[tuple[int, torch.dtype] | None],
    input_batch_dims: list[int | None],
    input_shapes: list[list[int | str] | None],
    extra: dict[str, Any],
) -> Path:
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    stage_entries = []
    for stage in stages:
        source_name, weights_name = f"stage_{stage.index}.py", f"stage_{stage.index}.safetensors"
        (folder / source_name).write_text(stage.code)
        tensors, aliases = _dedup_shared(stage.module.state_dict())
        save_file(tensors, str(folder / weights_name))
        for name in (source_name, weights_name):
            files[name] = _sha256(folder / name)
        stage_entries.append(
            {
                "index": stage.index,
                "class": f"Stage{stage.index}",
                "source": source_name,
                "weights": weights_name,
                "aliases": aliases,
                "input_indices": stage.input_indices,
                "output_indices": stage.output_indices,
                **stage.transfers,
            }
        )
    (folder / "plan.txt").write_text(plan.to_text() + "\n")
    files["plan.txt"] = _sha256(folder / "plan.txt")
    manifest = {
        "format": FORMAT,
        "plan": plan.to_json(),
        "in_spec": pytree.treespec_dumps(in_spec),
        "out_spec": pytree.treespec_dumps(out_spec),
        "inputs": [
            None if m is None else {"ndim": m[0], "dtype": str(m[1]), "batch_dim": d, "shape": s}
            for m, d, s in zip(input_meta, input_batch_dims, input_shapes)
        ],
        "stages": stage_entries,
        "files": files,
        **extra,
    }
    (folder / PLAN_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def input_checks(
    manifest: dict[str, Any],
) -> tuple[list[tuple[int, torch.dtype] | None], list[list[int | str] | None]]:
    """What each input must be, from a plan folder's manifest: ``(ndim, dtype)`` and the
    compiled shape (for ``runtime.local.check_input_tensors``)."""
    entries = manifest["inputs"]
    meta = [None if m is None else (m["ndim"], _dtype(m["dtype"])) for m in entries]
    return meta, [None if m is None else m.get("shape") for m in entries]


def load_stage(path: str | Path, index: int) -> tuple[StageModule, dict[str, Any]]:
    """Load one stage (its file and weights only, checksums verified) and the manifest: what a
    rank of the distributed runtime needs."""
    folder = Path(path)
    manifest = read_manifest(folder)
    entries = {entry["index"]: entry for entry in manifest["stages"]}
    if index not in entries:
        raise PlanFolderError(
            f"{folder} holds stages {sorted(entries)}, not stage {index}; the plan has "
            f"{len(entries)} stages, so it needs {len(entries)} ranks"
        )
    entry = entries[index]
    verify_files(folder, manifest, names={entry["source"], entry["weights"]})
    return _load_stage(folder, entry, Plan.from_json(manifest["plan"])), manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    plan_file = folder / PLAN_FILE
    if not plan_file.is_file():
        raise PlanFolderError(f"{folder} is not a plan folder: {PLAN_FILE} is missing")
    try:
        manifest = json.loads(plan_file.read_text())
    except json.JSONDecodeError as exc:
        raise PlanFolderError(f"{plan_file} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PlanFolderError(f"{plan_file}: expected format {FORMAT!r}, found {found!r}")
    for key in ("plan", "in_spec", "out_spec", "inputs", "stages", "files"):
        if key not in manifest:
            raise PlanFolderError(f"{plan_file} lacks the field {key!r}")
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], names: set[str] | None = None) -> None:
    named = {entry[k] for entry in manifest["stages"] for k in ("source", "weights")}
    unlisted = sorted(named - set(manifest["files"]))
    if unlisted:
        raise PlanFolderError(f"{folder / PLAN_FILE} names {unlisted} without a checksum")
    for name, expected in manifest["files"].items():
        if names is not None and name not in names:
            continue
        file = folder / name
        if Path(name).name != name:
            raise PlanFolderError(f"{PLAN_FILE} names {name!r}, which is outside the folder")
        if not file.is_file():
            raise PlanFolderError(f"{file} is missing; the plan folder is incomplete")
        actual = _sha256(file)
        if actual != expected:
            raise PlanFolderError(
                f"{file} was modified after it was saved: SHA-256 {actual[:16]}… does not match "
                f"{expected[:16]}… recorded in {PLAN_FILE}; save the plan again"
            )


def _load_stage(folder: Path, entry: dict[str, Any], plan: Plan) -> StageModule:
    """Stage ``entry`` of the folder; its devices and shares are the plan's (one source)."""
    source = folder / entry["source"]
    module_name = f"_dora_stage_{_sha256(source)[:12]}_{entry['index']}"
    spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:
        raise PlanFolderError(f"cannot import {source}")
    python_module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = python_module
    spec.loader.exec_module(python_module)
    stage = getattr(python_module, entry["class"])()
    weights = load_file(str(folder / entry["weights"]))
    for alias, target in entry.get("aliases", {}).items():
        weights[alias] = weights[target]
    try:
        stage.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise PlanFolderError(f"{folder / entry['weights']} does not fit {source}: {exc}") from None
    stage.eval()
    return StageModule(
        index=entry["index"],
        module=stage,
        input_indices=list(entry["input_indices"]),
        output_indices=list(entry["output_indices"]),
        devices=plan.stages[entry["index"]].devices,
        code=source.read_text(),
        transfers={
            **{k: entry.get(k, []) for k in ("sends", "recvs", "outputs")},
            **({"schedule": entry["schedule"]} if "schedule" in entry else {}),
        },
        shares=plan.stages[entry["index"]].shares,
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
        tensors[name] = tensor.detach().contiguous().clone() if _shares(tensor, tensors) else tensor.detach().contiguous()
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


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise PlanFolderError(f"unknown dtype {name!r} in {PLAN_FILE}")
    return dtype


def _load_spec(text: str) -> pytree.TreeSpec:
    """Output containers of types this process does not know (a transformers ModelOutput when
    transformers is not imported) come back as plain dicts with the same keys."""
    try:
        return pytree.treespec_loads(text)
    except Exception:  # noqa: BLE001 - unknown container type
        protocol, tree = json.loads(text)
        return pytree.treespec_loads(json.dumps([protocol, _known_types_only(tree)]))


def _known_types_only(node: dict[str, Any]) -> dict[str, Any]:
    known = {"builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict", None}
    kind = node["type"]
    if kind not in known and kind not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
        kind = "builtins.dict"
    return {
        "type": kind,
        "context": node["context"],
        "children_spec": [_known_types_only(c) for c in node["children_spec"]],
    }
