"""A training task for each zoo model: a loss on its first output and random targets, so the
CLI, tests and benchmarks can train any model of ``dora_fx.models`` with nothing downloaded.

Models whose first output is class scores (GPT-2 and Llama logits per token, MobileNetV2 and
ResNet logits per image, the built-in MLP, CNN and transformer) get cross-entropy against random
class indices; encoders without a head (BERT, ViT: hidden states) get mean-squared error against
a random tensor of that shape. Both losses average over the batch (``reduction="mean"``), so a
batch cut into microbatches has the same loss and gradients. The losses are module-level
classes, so they pickle to the ranks of a distributed run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ClassScoresLoss", "RegressionLoss", "first_output", "training_task", "without_dropout",
]

_REGRESSION = ("bert", "vit")
_DROPOUT_KEYS = (
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "attention_dropout",
)  # fmt: skip


def without_dropout(model: nn.Module) -> nn.Module:
    """Turn every dropout of ``model`` off (``nn.Dropout`` modules and the dropout rates of a
    Hugging Face config, which attention reads at each call), so training is deterministic
    and a compiled model's steps can be compared with the plain model's. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in _DROPOUT_KEYS:
        if config is not None and hasattr(config, key):
            setattr(config, key, 0.0)
    return model


def first_output(output: Any) -> torch.Tensor:
    """The model's first output tensor: the tensor itself, a mapping's (or Hugging Face
    ``ModelOutput``'s) first value, a sequence's first item."""
    while not isinstance(output, torch.Tensor):
        if isinstance(output, Mapping):
            output = next(iter(output.values()))
        elif isinstance(output, Sequence) and output:
            output = output[0]
        else:
            raise TypeError(f"no output tensor in {type(output).__name__}")
    return output


class ClassScoresLoss(nn.Module):
    """Cross-entropy of the first output's last dim (class scores) against integer targets of
    the other dims' shape."""

    def forward(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        scores = first_output(output)
        return F.cross_entropy(scores.reshape(-1, scores.shape[-1]).float(), target.reshape(-1))


class RegressionLoss(nn.Module):
    """Mean-squared error of the first output against a target of its shape."""

    def forward(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(first_output(output).float(), target)


def training_task(name: str, model: nn.Module, inputs: tuple[Any, ...], seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """``(loss_fn, target)`` for zoo model ``name`` at these example inputs (the target has
    one row per input row, drawn from ``seed``)."""
    with torch.no_grad():
        out = first_output(model(*inputs))
    generator = torch.Generator().manual_seed(seed)
    if name in _REGRESSION:
        return RegressionLoss(), torch.randn(out.shape, generator=generator)
    classes = out.shape[-1]
    return ClassScoresLoss(), torch.randint(0, classes, out.shape[:-1], generator=generator)
