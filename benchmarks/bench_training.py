"""Training benchmark: transparency, distributed training, the planner and the peer.

    python benchmarks/bench_training.py [--quick]

1. Transparency, in process: every zoo and Hugging Face model of the spine (small configs,
   dropout off) compiled with mode="train" at 2-3 stages and 2 microbatches; the gradients of
   one train_step against plain PyTorch's, and the losses of 3 SGD steps.

Prints tables; the last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from typing import Any

import torch

import dora_fx
from dora_fx import models
from dora_fx.training_tasks import training_task, without_dropout

warnings.filterwarnings("ignore")
SPINE = ("mlp", "cnn", "transformer", "gpt2", "bert", "vit", "mobilenetv2", "resnet", "llama")
BATCH_NORM = {"cnn", "mobilenetv2", "resnet"}  # microbatches > 1 normalize per microbatch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def transparency(name: str, stages: int, steps: int) -> dict[str, Any]:
    """One model: the gradients of the first step and the losses of ``steps`` SGD steps,
    compiled vs plain."""
    model, inputs = models.build(name, "small", batch=4)
    without_dropout(model).train()
    loss_fn, target = training_task(name, model, inputs)
    plain = copy.deepcopy(model)
    microbatches = 1 if name in BATCH_NORM else 2
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.edge_cluster(), dora_fx.QoE(batch=4), example_inputs=inputs,
        mode="train", loss_fn=loss_fn, num_stages=stages, microbatches=microbatches,
    )  # fmt: skip
    ours_opt = torch.optim.SGD(compiled.parameters(), lr=0.01)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01)
    grad_err = loss_err = 0.0
    for step in range(steps):
        ours = compiled.train_step(*inputs, target=target)
        theirs = loss_fn(plain(*inputs), target)
        theirs.backward()
        if step == 0:
            grads = dict(compiled.named_parameters())
            grad_err = max(
                _rel(grads[k].grad, p.grad) for k, p in plain.named_parameters() if p.grad is not None
            )
        loss_err = max(loss_err, abs(float(ours.detach()) - float(theirs.detach())) / abs(float(theirs.detach())))
        for opt in (ours_opt, plain_opt):
            opt.step()
            opt.zero_grad()
    return {"model": name, "stages": len(compiled.stages), "microbatches": microbatches,
            "grad_rel_err": grad_err, "loss_rel_err": loss_err}  # fmt: skip


def transparency_table(names: tuple[str, ...], steps: int) -> list[dict[str, Any]]:
    rows = [transparency(n, 3 if n != "mlp" else 2, steps) for n in names]
    print("\n== transparency, in process (train_step vs plain PyTorch, SGD) ==")
    print(f"{'model':<12} {'stages':>6} {'mb':>3} {'grad rel err':>13} {'loss rel err':>13}")
    for r in rows:
        print(f"{r['model']:<12} {r['stages']:>6} {r['microbatches']:>3} "
              f"{r['grad_rel_err']:>13.2e} {r['loss_rel_err']:>13.2e}")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer models and steps")
    args = parser.parse_args(argv)
    started = time.monotonic()
    names = ("mlp", "transformer", "gpt2") if args.quick else SPINE
    rows = transparency_table(names, steps=2 if args.quick else 3)
    summary: dict[str, Any] = {
        "grad_max_rel_err": max(r["grad_rel_err"] for r in rows),
        "loss_max_rel_err": max(r["loss_rel_err"] for r in rows),
    }
    summary["bench_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
