"""The training peer (torch.distributed.pipelining, Schedule1F1B, one process per device) trains
as plain single-process training does, so the side-by-side benchmark runs it fairly."""

from __future__ import annotations

import copy
import time

import pytest
import torch

import dora_fx
from dora_fx import models
from dora_fx.peers import pipelining_train
from dora_fx.peers.pipelining_train import (
    PeerScheduleHung,
    PeerTrainingResult,
    logits_cross_entropy,
    peer_training_throughput,
    run_pipelining_training,
    synthetic_batches,
)


def plain_losses(model, batches, loss_fn, lr):
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for args, target in batches:
        loss = loss_fn(model(*args), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_emulated_1f1b_training_gives_plain_training_losses():
    model, (x,) = models.build("mlp", batch=4)
    batches = synthetic_batches((x,), torch.zeros(4, dtype=torch.long), steps=3, seed=1)
    loss_fn = torch.nn.functional.cross_entropy
    result = run_pipelining_training(
        model, batches, ["phone", "laptop"], loss_fn, cluster=dora_fx.scenarios.smart_home(),
        microbatches=2, lr=0.1, time_scale=4.0, timeout_s=30,
    )  # fmt: skip
    assert result.losses == pytest.approx(plain_losses(model, batches, loss_fn, 0.1), rel=1e-4)
    assert [len(step) for step in result.microbatch_losses] == [2, 2, 2]
    assert len(result.iteration_s) == 3 and min(result.iteration_s) > 0
    assert result.samples_per_s > 0 and result.time_scale == 4.0
    for rank in result.ranks:  # the backward is priced from its own recorded ops
        assert rank["predicted_backward_s"] > 0 and rank["bytes_sent"] > 0


@pytest.mark.slow
def test_gpt2_trains_with_torch_p2p_and_unties_its_embeddings():
    """Unemulated, so 1F1B's mixed send/receive batches go through torch's own
    ``dist.batch_isend_irecv`` on gloo (it does not hang). The split copies GPT-2's tied
    embedding into both stages and each trains its own copy: the losses are those of plain
    training of the untied model (the first step's equal the tied model's)."""
    model, (tokens,) = models.build("gpt2", batch=4)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batches = synthetic_batches((tokens,), tokens, steps=2, seed=1)
    result = run_pipelining_training(
        model, batches, ["phone", "laptop"], logits_cross_entropy, microbatches=2, lr=0.1,
        warmup=1, emulate=False, timeout_s=30,
    )  # fmt: skip
    untied = copy.deepcopy(model)
    untied.lm_head.weight = torch.nn.Parameter(untied.transformer.wte.weight.detach().clone())
    expected = plain_losses(untied, batches, logits_cross_entropy, 0.1)
    assert result.losses == pytest.approx(expected, rel=1e-4)
    tied = plain_losses(model, batches, logits_cross_entropy, 0.1)
    assert result.losses[0] == pytest.approx(tied[0], rel=1e-4)


def test_bad_runs_are_refused_before_any_rank_starts():
    model, (x,) = models.build("mlp", batch=4)
    batches = synthetic_batches((x,), torch.zeros(4, dtype=torch.long), steps=1)
    loss_fn = torch.nn.functional.cross_entropy
    two = ["phone", "laptop"]
    with pytest.raises(ValueError, match="must pickle to reach the ranks"):
        run_pipelining_training(model, batches, two, lambda o, t: o.sum(), emulate=False)
    with pytest.raises(ValueError, match="Schedule1F1B needs at least as many microbatches"):
        run_pipelining_training(model, batches, two, loss_fn, microbatches=1, emulate=False)
    with pytest.raises(ValueError, match="schedule must be one of"):
        run_pipelining_training(model, batches, two, loss_fn, schedule="zb", emulate=False)
    with pytest.raises(ValueError, match="does not split into 3 equal microbatches"):
        run_pipelining_training(model, batches, two, loss_fn, microbatches=3, emulate=False)


def test_a_run_past_its_deadline_is_stopped_and_says_so():
    model, (x,) = models.build("mlp", batch=4)
    batches = synthetic_batches((x,), torch.zeros(4, dtype=torch.long), steps=1)
    started = time.monotonic()
    with pytest.raises(PeerScheduleHung, match=r"Schedule1F1B on gloo did not finish within 2 s"):
        run_pipelining_training(
            model, batches, ["phone", "laptop"], torch.nn.functional.cross_entropy,
            emulate=False, timeout_s=2, startup_s=0,
        )  # fmt: skip
    assert time.monotonic() - started < 15


def test_benchmark_falls_back_to_gpipe_when_1f1b_hangs(monkeypatch):
    def fake_run(model, batches, devices, loss_fn, *, schedule, **options):
        if schedule == "1f1b":
            raise PeerScheduleHung("Schedule1F1B did not finish", schedule="1f1b")
        ranks = [{"predicted_step_s": 0.25}]
        return PeerTrainingResult(schedule, [1.0], [[1.0]], [0.5], 8.0, 4, 1.0, ranks, 1.0, True)

    monkeypatch.setattr(pipelining_train, "run_pipelining_training", fake_run)
    model, (x,) = models.build("mlp", batch=4)
    figures = peer_training_throughput(
        model, (x,), torch.zeros(4, dtype=torch.long), dora_fx.scenarios.smart_home(),
        torch.nn.functional.cross_entropy, devices=["phone", "laptop"],
    )  # fmt: skip
    assert figures["hung_1f1b"] and figures["schedule_used"] == "ScheduleGPipe"
    assert figures["samples_per_s"] == 8.0 and figures["iteration_s"] == 0.5
    assert "Schedule1F1B did not finish" in figures["note"]
