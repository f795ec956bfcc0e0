"""In-process and distributed data-parallel give every device the same rows (one batch split,
``ir.batch_split``), members the split gives no rows included: they sit the request out."""

from __future__ import annotations

import random

import torch

import dora_fx
from dora_fx.ir.batch_split import split_sizes
from dora_fx.runtime.distributed.launch import run_local

from .conftest import close, copy_plan, data_parallel


def test_both_runtimes_give_each_device_the_same_rows(mlp2_plan, tmp_path):
    model, _, folder = mlp2_plan
    rng = random.Random(7)
    groups = {
        0: (["phone", "laptop"], _shares(rng, 2)),
        1: (["rpi4", "jetson"], _shares(rng, 2)),
    }
    folder = data_parallel(copy_plan(folder, tmp_path / "dp"), groups)
    batches = [rng.randint(1, 7) for _ in range(6)] + [1, 2]
    generator = torch.Generator().manual_seed(0)
    requests = [(torch.randn(rows, 64, generator=generator),) for rows in batches]
    # some member gets no rows of some request: the case the two runtimes used to split apart
    assert any(0 in split_sizes(rows, shares) for rows in batches for _, shares in groups.values())
    loaded = dora_fx.load(folder)
    local_rows: dict[str, int] = {}
    for request in requests:
        with torch.no_grad():
            assert close(loaded(*request), model(*request))
        for device, rows in loaded.last_rows.items():
            local_rows[device] = local_rows.get(device, 0) + rows
    result = run_local(folder, requests, microbatches=1, warmup=0, emulate=False, timeout_s=30)
    for request, output in zip(requests, result.outputs):
        assert close(output, model(*request))
    assert {r["device"]: r["rows"] for r in result.ranks} == local_rows
    # every data-parallel group got its own process group (for a gradient all-reduce)
    assert [r["group_size"] for r in result.ranks] == [2, 2, 2, 2]
    expected = {d: 0 for devices, _ in groups.values() for d in devices}
    for rows in batches:
        for devices, shares in groups.values():
            for device, size in zip(devices, split_sizes(rows, shares)):
                expected[device] += size
    assert local_rows == expected


def _shares(rng: random.Random, members: int) -> list[float]:
    raw = [rng.uniform(0.05, 1.0) for _ in range(members)]
    return [r / sum(raw) for r in raw]
