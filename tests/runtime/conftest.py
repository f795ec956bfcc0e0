"""Shared fixtures: small models compiled once per session onto smart_home devices, and plans
with data-parallel stages written by hand from them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import dora_fx
from dora_fx import models


def data_parallel(folder: Path, groups: dict[int, tuple[list[str], list[float]]]) -> Path:
    """Rewrite a saved plan so stage ``k`` runs on ``groups[k]`` (devices, shares): a
    data-parallel stage runs the same stage module on every device of its group."""
    manifest = json.loads((folder / "plan.json").read_text())
    for stage, (devices, shares) in groups.items():
        manifest["plan"]["stages"][stage]["devices"] = devices
        manifest["plan"]["stages"][stage]["shares"] = shares
    plan = dora_fx.Plan.from_json(manifest["plan"])
    (folder / "plan.txt").write_text(plan.to_text() + "\n")
    manifest["files"]["plan.txt"] = hashlib.sha256((folder / "plan.txt").read_bytes()).hexdigest()
    (folder / "plan.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _compiled(name: str, stages: int, folder: Path, batch: int = 4):
    model, example = models.build(name, batch=batch)
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.smart_home(), example_inputs=example, num_stages=stages
    )
    compiled.save(folder)
    return model, example, folder


@pytest.fixture(scope="session")
def gpt2_plan(tmp_path_factory):
    return _compiled("gpt2", 2, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def mobilenet_plan(tmp_path_factory):
    return _compiled("mobilenetv2", 3, tmp_path_factory.mktemp("mobilenetv2"))


@pytest.fixture(scope="session")
def mlp_plan(tmp_path_factory):
    return _compiled("mlp", 3, tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="session")
def mlp2_plan(tmp_path_factory):
    return _compiled("mlp", 2, tmp_path_factory.mktemp("mlp2"))


def copy_plan(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


@pytest.fixture(scope="session")
def host():
    """A made-up host: emulation's correctness does not depend on its accuracy."""
    return dora_fx.Device(
        "host", dense_flops_per_s=20e9, memory_bandwidth_bytes_per_s=5e9, op_overhead_s=5e-6
    )


def close(a, b) -> bool:
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)
