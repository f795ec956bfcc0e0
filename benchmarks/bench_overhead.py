"""Overhead of running the generated stages in-process against eager ``model(x)``.

GPT-2 small (12 layers, 768 wide, 128 tokens) and MobileNetV2 (1.0, 224x224) at batch 8, split
into one stage per device of the smart_home scenario. Eager and staged runs alternate, so both
see the same machine state; the ratio is of their medians, measured in this run. Also times
``dora_fx.compile`` on GPT-2 small.

    python benchmarks/bench_overhead.py [--repeats N]

Last line: one JSON object with gpt2_ratio, mobilenetv2_ratio, gpt2_compile_s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

import dora_fx
from dora_fx.explain import format_table
from dora_fx.models import build


def _time_once(fn, inputs) -> float:
    start = time.perf_counter()
    fn(*inputs)
    return time.perf_counter() - start


def measure(name: str, repeats: int, batch: int) -> dict[str, float]:
    model, inputs = build(name, "full", batch=batch)
    start = time.perf_counter()
    # a fixed stage count, one per device, one microbatch: what is measured is the cost of
    # stage boundaries and send/recv on the same work as eager (a data-parallel plan or
    # microbatches would change the work; in one process they cannot overlap anyway)
    cluster = dora_fx.scenarios.smart_home()
    compiled = dora_fx.compile(
        model, cluster, dora_fx.QoE(batch=batch), example_inputs=inputs,
        num_stages=len(cluster.devices), microbatches=1,
    )
    compile_s = time.perf_counter() - start
    with torch.no_grad():
        eager = lambda *x: model(*x)  # noqa: E731
        for fn in (eager, compiled):  # warm up both
            fn(*inputs)
        eager_s, staged_s = [], []
        for _ in range(repeats):
            eager_s.append(_time_once(eager, inputs))
            staged_s.append(_time_once(compiled, inputs))
    eager_med, staged_med = statistics.median(eager_s), statistics.median(staged_s)
    return {
        "stages": len(compiled.stages),
        "eager_s": eager_med,
        "staged_s": staged_med,
        "ratio": staged_med / eager_med,
        "compile_s": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    results = {name: measure(name, args.repeats, args.batch) for name in ("gpt2", "mobilenetv2")}
    rows = [
        [
            name,
            str(r["stages"]),
            f"{r['eager_s'] * 1e3:.1f}",
            f"{r['staged_s'] * 1e3:.1f}",
            f"{r['ratio']:.3f}",
            f"{r['compile_s']:.1f}",
        ]
        for name, r in results.items()
    ]
    print(f"batch {args.batch}, medians of {args.repeats} alternating runs, torch {torch.__version__}")
    print(format_table(["model", "stages", "eager ms", "stages ms", "ratio", "compile s"], rows))
    print(
        json.dumps(
            {
                "gpt2_ratio": round(results["gpt2"]["ratio"], 4),
                "mobilenetv2_ratio": round(results["mobilenetv2"]["ratio"], 4),
                "gpt2_compile_s": round(results["gpt2"]["compile_s"], 2),
                "repeats": args.repeats,
                "batch": args.batch,
            }
        )
    )


if __name__ == "__main__":
    main()
