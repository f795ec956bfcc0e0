"""Training checkpoints on disk (no processes): a rank's part round-trips, a step is complete
only when every rank's manifest is there (a half-written step falls back to the one before),
and no temporary file is left behind."""

from __future__ import annotations

import pytest
import torch

from dora_fx.artifact.checkpoint import (
    CheckpointError,
    RankCheckpoint,
    check_step,
    latest_complete,
    read_rank,
    step_dir,
    write_rank,
)

RANKS = [(0, 0, "phone"), (1, 1, "laptop")]


def _write(root, step, rank, value=1.0):
    info = RankCheckpoint(step, rank, RANKS[rank][1], RANKS[rank][2], len(RANKS), "plan", {})
    param = torch.nn.Parameter(torch.full((3,), value))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.ones(3)
    opt.step()
    return write_rank(root, info, {"w": param}, opt.state_dict()), param


def test_a_rank_checkpoint_round_trips(tmp_path):
    _, param = _write(tmp_path, 2, 0)
    weights, state = read_rank(step_dir(tmp_path, 2), 0)
    torch.testing.assert_close(weights["w"], param.detach())
    assert torch.equal(state["state"][0]["momentum_buffer"], torch.ones(3))
    assert not [p for p in step_dir(tmp_path, 2).iterdir() if ".tmp" in p.name]


def test_a_step_some_rank_did_not_finish_is_not_resumed_from(tmp_path):
    for rank in (0, 1):
        _write(tmp_path, 2, rank)
    _write(tmp_path, 4, 0)  # rank 1 died before writing step 4
    assert latest_complete(tmp_path, 2) == step_dir(tmp_path, 2)
    assert check_step(step_dir(tmp_path, 2), RANKS, "plan") == 2
    with pytest.raises(CheckpointError, match=r"rank_1\.json is missing: rank 1 did not complete"):
        check_step(step_dir(tmp_path, 4), RANKS, "plan")


def test_a_checkpoint_of_another_plan_is_refused(tmp_path):
    for rank in (0, 1):
        _write(tmp_path, 2, rank)
    with pytest.raises(CheckpointError, match=r"written by another plan"):
        check_step(step_dir(tmp_path, 2), RANKS, "other")
    with pytest.raises(CheckpointError, match=r"rank 1 of stage 1 on 'laptop' .* stage 1 on 'jetson'"):
        check_step(step_dir(tmp_path, 2), [(0, 0, "phone"), (1, 1, "jetson")], "plan")
