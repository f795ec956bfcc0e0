"""``torch.compile(model, backend="dora")`` in-process against eager ``model(x)``.

GPT-2 small (12 layers, 768 wide, 128 tokens, random weights) at batch 8 on the smart_home
scenario with the demo's QoE (1500 ms; requests from the phone, results back to it). The
backend plans every Dynamo graph and runs its stages in this process; one microbatch per call
(``microbatches=1``), so both sides do the same work (in one process microbatches cannot
overlap anything). Eager and compiled calls alternate, so both see the same machine state; the
ratio is of their medians, measured in this run. The first compiled call (Dynamo's capture,
then dora_fx's passes) is timed apart as ``compile_s``.

Training (skip with ``--no-train``): the spine's tiny GPT-2 (2 layers, 64 wide) at batch 8,
one backward through the backend (AOTAutograd, the backward cut over 2 stages) against eager;
``train_grad_max_rel_err`` is the largest over the parameters of max |dora - eager| /
max |eager| of their gradients.

    python benchmarks/bench_torch_compile.py [--repeats N] [--no-train]

Last line: one JSON object with gpt2_ratio, graphs_planned, compile_s (and
train_grad_max_rel_err, train_backward).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings

import torch

import dora_fx
from dora_fx.models import build

warnings.filterwarnings("ignore")


def _seconds(fn, inputs) -> float:
    start = time.perf_counter()
    fn(*inputs)
    return time.perf_counter() - start


def _train_figures() -> dict[str, object]:
    """One backward of the tiny GPT-2 through the backend against eager's."""
    torch._dynamo.reset()
    model, (tokens,) = build("gpt2", "small", batch=8)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    reference = copy.deepcopy(model)
    backend = dora_fx.backend(dora_fx.scenarios.smart_home(), dora_fx.QoE(batch=8),
                              num_stages=2, min_flops=0)  # fmt: skip
    fast = torch.compile(model, backend=backend)
    fast(tokens).logits.square().mean().backward()
    reference(tokens).logits.square().mean().backward()
    worst = 0.0
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        scale = theirs.grad.abs().max().clamp_min(1e-12)
        worst = max(worst, float((ours.grad - theirs.grad).abs().max() / scale))
    backward = [r.backward for r in backend.records if r.backward is not None]
    print(backend.explain())
    return {"train_grad_max_rel_err": worst, "train_backward": backward[0] if backward else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-train", action="store_true", help="skip the training figures")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, inputs = build("gpt2", "full", batch=8)
    qoe = dora_fx.QoE(latency_ms=1500, batch=8)
    # the same as backend="dora", options={"devices": ..., "qoe": ..., "microbatches": 1}; this
    # form keeps the backend's records at hand
    backend = dora_fx.backend(dora_fx.scenarios.smart_home(), qoe, microbatches=1)
    fast = torch.compile(model, backend=backend)
    with torch.no_grad():
        started = time.perf_counter()
        first = fast(*inputs)
        compile_s = time.perf_counter() - started
        torch.testing.assert_close(first.logits, model(*inputs).logits, rtol=1e-4, atol=1e-4)
        eager, dora = [], []
        for _ in range(args.repeats):
            eager.append(_seconds(model, inputs))
            dora.append(_seconds(fast, inputs))
    report = backend.explain()
    planned = sum(r.plan is not None for r in backend.records)
    print(report)
    print()
    print(f"{'':<8} {'median s':>9} {'min s':>8} {'max s':>8}")
    for name, times in (("eager", eager), ("dora", dora)):
        print(f"{name:<8} {statistics.median(times):>9.3f} {min(times):>8.3f} {max(times):>8.3f}")
    ratio = statistics.median(dora) / statistics.median(eager)
    print(f"dora / eager (medians, {args.repeats} alternating calls each): {ratio:.3f}")
    train = {} if args.no_train else _train_figures()
    print(json.dumps({
        "gpt2_ratio": round(ratio, 4),
        "graphs": len(backend.records),
        "graphs_planned": planned,
        "compile_s": round(compile_s, 2),
        "eager_median_s": round(statistics.median(eager), 4),
        "dora_median_s": round(statistics.median(dora), 4),
        **train,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
