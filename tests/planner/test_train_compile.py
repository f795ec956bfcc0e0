"""A training compile plans the training problem and explains the iteration it chose."""

from __future__ import annotations

import torch

import dora_fx
from dora_fx.models import build


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(out, target)


def test_train_compile_plans_the_iteration_and_explains_it() -> None:
    model, inputs = build("mlp", batch=8)
    model.train()
    qoe = dora_fx.QoE(objective="throughput", batch=8, iteration_ms=1e4)
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.smart_home(), qoe, example_inputs=inputs, mode="train", loss_fn=_loss
    )
    text = compiled.explain()
    assert "training iteration (" in text and "samples/s" in text and "J per iteration" in text
    assert "planned training memory per device:" in text and "in flight" in text
    assert "method: train-dp" in text
    target = torch.randn_like(model(*inputs))
    loss = compiled.train_step(*inputs, target=target)
    assert torch.isfinite(loss)


def test_pinned_training_plan_gets_training_figures_too() -> None:
    model, inputs = build("mlp", batch=4)
    model.train()
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.smart_home(), dora_fx.QoE(batch=4), example_inputs=inputs,
        mode="train", loss_fn=_loss, num_stages=2, microbatches=2,
    )  # fmt: skip
    text = compiled.explain()
    assert "training iteration (1f1b, 2 microbatches, adamw, batch 4)" in text
