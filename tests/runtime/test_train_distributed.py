"""Distributed training is transparent: one process per device, 1F1B (or GPipe) over the plan's
stages, gives the losses and weights of plain single-process training (rtol 1e-4), at 2 and 3
stages with 1, 2 and 4 microbatches, with a data-parallel stage and with GPT-2's tied
embedding; a killed rank is named with its step, and resuming from the last checkpoint does
exactly the missing steps; corrupted checkpoints and losses that cannot travel are refused."""

from __future__ import annotations

import copy
import json
import shutil
import threading

import pytest
import torch
import torch.nn.functional as F

import dora_fx
from dora_fx import models
from dora_fx.artifact.checkpoint import CheckpointError
from dora_fx.runtime.distributed.train_config import KILL_ENV
from dora_fx.runtime.distributed.train_launch import TrainingRankLost

LR = 0.05


def lm_loss(output, target):
    """Cross-entropy of a language model's logits (GPT-2 returns a dict)."""
    logits = output["logits"]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def _setup(name: str, batch: int = 4):
    torch.manual_seed(0)
    model, example = models.build(name, batch=batch)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    generator = torch.Generator().manual_seed(1)
    if name == "gpt2":
        config = model.config
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
        target = torch.randint(0, config.vocab_size, example[0].shape, generator=generator)
        return model, example, target, lm_loss
    with torch.no_grad():
        out = copy.deepcopy(model)(*example)
    return model, example, torch.randn(out.shape, generator=generator), torch.nn.MSELoss()


def _plain(model, example, target, loss_fn, steps, optimizer):
    """Plain single-process training: the losses and the final weights."""
    model = copy.deepcopy(model)
    opt = optimizer(list(model.parameters()))
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(*example), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, model.state_dict()


def _compile(model, example, loss_fn, **options):
    return dora_fx.compile(
        copy.deepcopy(model), dora_fx.scenarios.smart_home(), dora_fx.QoE(batch=4),
        example_inputs=example, mode="train", loss_fn=loss_fn, **options,
    )  # fmt: skip


def _sgd(params):
    return torch.optim.SGD(params, lr=LR)


def _assert_same(result, losses, state):
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(losses), rtol=1e-4, atol=1e-6)
    assert list(result.state_dict) == list(state)  # the model's keys, tied ones included
    for key, tensor in state.items():
        torch.testing.assert_close(result.state_dict[key], tensor, rtol=1e-4, atol=1e-5, msg=key)


DP_PLAN = (
    "plan p\nstage 0 blocks=0:4 devices=phone,laptop shares=0.5,0.5\n"
    "stage 1 blocks=4:9 devices=jetson"
)
# 2 microbatches: the kill-and-resume run (3 stages) and the emulated run (2 stages)
CASES = {
    "mlp-3-stages-4-mb-gpipe": ("mlp", {"num_stages": 3, "microbatches": 4}, {"policy": "gpipe"}),
    # 3 microbatches of 2, 1, 1 rows: both members compute the first, the second member sits
    # out the others (the batch split gives it no rows)
    "mlp-data-parallel-3-mb": ("mlp", {"plan": DP_PLAN, "microbatches": 2}, {"microbatches": 3}),
    "gpt2-tied-1-mb": ("gpt2", {"num_stages": 2, "microbatches": 1}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_distributed_training_equals_plain_training(case):
    name, compile_options, run_options = CASES[case]
    model, example, target, loss_fn = _setup(name)
    compiled = _compile(model, example, loss_fn, **compile_options)
    result = compiled.train_distributed(
        [(example, target)], steps=3, optimizer=_sgd, timeout_s=30, **run_options
    )
    _assert_same(result, *_plain(model, example, target, loss_fn, 3, _sgd))
    assert result.steps == [0, 1, 2] and len(result.iteration_s) == 3
    assert all(t > 0 for t in result.iteration_s) and not result.emulated
    if name == "gpt2":  # the tied embedding is one parameter on stage 0 and on stage 1
        assert "transformer.wte.weight" in result.state_dict and "lm_head.weight" in result.state_dict


def _momentum(params):
    return torch.optim.SGD(params, lr=LR, momentum=0.9)  # state that a resume must restore


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """5 steps, a checkpoint every 2, rank 1 killed as step 3 starts; then resumed."""
    model, example, target, loss_fn = _setup("mlp")
    compiled = _compile(model, example, loss_fn, num_stages=3, microbatches=2)
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    options = dict(steps=5, optimizer=_momentum, checkpoint_dir=checkpoints, checkpoint_every=2)
    mp = pytest.MonkeyPatch()
    mp.setenv(KILL_ENV, "1:3")
    try:
        with pytest.raises(TrainingRankLost) as lost:
            compiled.train_distributed([(example, target)], timeout_s=20, **options)
    finally:
        mp.undo()
    resumed = compiled.train_distributed(
        [(example, target)], resume_from=checkpoints, timeout_s=30, **options
    )
    expected = _plain(model, example, target, loss_fn, 5, _momentum)
    return lost.value, resumed, expected, checkpoints, compiled, (example, target)


def test_a_killed_rank_is_named_with_its_stage_device_and_step(interrupted):
    lost = interrupted[0]
    assert (lost.rank, lost.stage, lost.step) == (1, 1, 3) and lost.device
    assert lost.checkpoint is not None and lost.checkpoint.name == "step_00000002"
    message = str(lost)
    assert "training stopped at training step 3" in message
    assert f"rank 1 (stage 1 on device {lost.device!r})" in message and "SIGKILL" in message
    assert "newest complete checkpoint: step_00000002" in message


def test_resuming_runs_exactly_the_missing_steps(interrupted):
    _, resumed, (losses, state), _, _, _ = interrupted
    assert resumed.steps == [2, 3, 4]  # steps 0-1 come from the checkpoint: none lost, none twice
    assert resumed.checkpoints == [4, 5]
    _assert_same(resumed, losses[2:], state)


def test_a_corrupted_checkpoint_is_refused_naming_the_file(interrupted, tmp_path):
    *_, checkpoints, compiled, batch = interrupted
    broken = shutil.copytree(checkpoints / "step_00000004", tmp_path / "step_00000004")
    weights = broken / "rank_2.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=r"corrupted checkpoint: .*rank_2\.safetensors has SHA-256"):
        compiled.train_distributed([batch], steps=6, optimizer=_momentum, resume_from=broken)


def test_ranks_whose_checkpoints_disagree_are_refused(interrupted, tmp_path):
    *_, checkpoints, compiled, batch = interrupted
    mixed = shutil.copytree(checkpoints / "step_00000004", tmp_path / "step_00000004")
    manifest = json.loads((mixed / "rank_1.json").read_text())
    manifest["step"] = 2
    (mixed / "rank_1.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"disagree on the step \(rank 0: step 4, rank 1: step 2"):
        compiled.train_distributed([batch], steps=6, optimizer=_momentum, resume_from=mixed)


def test_a_loss_that_cannot_be_pickled_is_refused_before_any_rank_starts(interrupted):
    *_, compiled, batch = interrupted
    lock = threading.Lock()

    def loss_with_a_lock(output, target):
        with lock:
            return F.mse_loss(output, target)

    with pytest.raises(dora_fx.InputError, match=r"loss_fn .* cannot be pickled for the ranks"):
        compiled.train_distributed([batch], steps=1, loss_fn=loss_with_a_lock)


def test_targets_of_the_wrong_batch_are_refused(interrupted):
    *_, compiled, (example, target) = interrupted
    with pytest.raises(dora_fx.InputError, match=r"step 0: target has 3 rows .* a batch of 4"):
        compiled.train_distributed([(example, target[:3])], steps=1)


def test_emulated_training_reports_device_time_and_stays_transparent(host):
    model, example, target, loss_fn = _setup("mlp")
    compiled = _compile(model, example, loss_fn, num_stages=2, microbatches=2)
    result = compiled.train_distributed(
        [(example, target)], steps=3, optimizer=_sgd, emulate=True, host=host, timeout_s=60
    )
    _assert_same(result, *_plain(model, example, target, loss_fn, 3, _sgd))
    assert result.emulated and result.time_scale > 0
    assert all(t > 0 for t in result.iteration_s) and result.iteration_s_mean > 0
    assert result.iteration_s_median > 0
    # every rank's trace names its optimizer step, paced to the device's predicted time
    for rank in result.ranks:
        steps = [(s, e) for _, action, s, e in rank["trace"] if action == "OPTIMIZER"]
        assert len(steps) == 3


def test_the_optimizer_step_lasts_the_device_time_dilated() -> None:
    import time

    from dora_fx.runtime.distributed.train_emulation import StepEmulation, optimizer_kind

    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.ones(4)
    optimizer = torch.optim.SGD([param], lr=0.5)
    emulation = StepEmulation(time_scale=2.0, device_optimizer_s=0.02)
    started = time.monotonic()
    emulation.step_optimizer(optimizer)
    assert time.monotonic() - started >= 0.04  # a sleep's lower bound, not a timing
    assert torch.equal(param.detach(), torch.full((4,), 0.5))
    sgd = {"class": "torch.optim.sgd:SGD", "kwargs": {"lr": 0.1}}
    assert optimizer_kind(sgd) == "sgd"
    assert optimizer_kind({**sgd, "kwargs": {"momentum": 0.9}}) == "sgd-momentum"
    assert optimizer_kind({"class": "torch.optim.adamw:AdamW", "kwargs": {}}) == "adamw"
    assert optimizer_kind({"class": "mine:Lion", "kwargs": {}}) == "adamw"  # unknown: the most
