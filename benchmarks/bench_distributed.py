"""Distributed runtime benchmark: emulation fidelity, predicted vs measured, and the peer.

    python benchmarks/bench_distributed.py [--quick]

1. Emulated link: one flow over a switched link of B bytes/s; the receiver times each transfer.
2. Shared medium: two flows from two processes at once through one emulated Wi-Fi AP; each
   flow's share of what the medium carried.
3. Prediction: models x scenarios run emulated (one process per device, each executing its
   stage's schedule); measured latency and throughput against the simulator's for the same
   plan, schedule (microbatches, overlap, contention) and load (``compiled.simulate``), in all
   and per action class (compute per stage, input, transfer, return: ``report``).
4. Peer: on emulated smart_home, torch.distributed.pipelining (evenly spaced SplitPoints,
   ScheduleGPipe) vs Dora's plan, same emulation; throughputs, latencies and their ratio.

Prints tables; the last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dora_fx
from dora_fx.cost_models.calibrate import calibrate
from dora_fx.cost_models.network import Link, Medium, Network
from dora_fx.runtime.distributed.launch import run_local
from dora_fx.runtime.distributed.report import format_action_report

warnings.filterwarnings("ignore")
MB = 1e6


class Fanout(nn.Module):
    """A small input becomes a big tensor at the cut (``width`` floats per row): transfers
    dominate, compute is negligible."""

    def __init__(self, width: int = 1 << 18) -> None:
        super().__init__()
        self.width = width
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.repeat(1, self.width // x.shape[1]) * self.scale
        return (y + 1).sum(-1)


def data_parallel(folder: Path, groups: dict[int, tuple[list[str], list[float]]]) -> Path:
    """Rewrite a saved plan so stage k runs on a data-parallel group (devices, shares)."""
    manifest = json.loads((folder / "plan.json").read_text())
    for stage, (devices, shares) in groups.items():
        manifest["plan"]["stages"][stage].update(devices=devices, shares=shares)
    (folder / "plan.txt").write_text(dora_fx.Plan.from_json(manifest["plan"]).to_text() + "\n")
    manifest["files"]["plan.txt"] = hashlib.sha256((folder / "plan.txt").read_bytes()).hexdigest()
    (folder / "plan.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _fast(name: str) -> dora_fx.Device:
    return dora_fx.Device(name, dense_flops_per_s=1e13, memory_bandwidth_bytes_per_s=1e12)


def _rates(result: Any, min_bytes: float) -> list[tuple[int, int, float]]:
    """(receiving rank, sending rank, bytes/s) of every big measured transfer."""
    return [
        (r["rank"], t["src"], t["bytes"] / t["seconds"])
        for r in result.ranks
        for t in r["received"]
        if t["bytes"] >= min_bytes
    ]


def link_check(work: Path, host: dora_fx.Device, requests: int) -> dict[str, float]:
    rate_bps, latency_s = 100e6, 2e-3
    network = Network(
        "switch", media=(Medium("switch", "switched"),),
        links=tuple(Link(d, "switch", rate_bps, rate_bps, latency_s) for d in "ab"),
    )  # fmt: skip
    cluster = dora_fx.Cluster((_fast("a"), _fast("b")), network, name="link")
    folder = work / "link"
    dora_fx.compile(
        Fanout(), cluster, example_inputs=(torch.randn(4, 16),), num_stages=2, microbatches=1
    ).save(folder)  # one message per request: the link's rate is measured per transfer
    result = run_local(
        folder, [(torch.randn(4, 16),)] * requests, emulate=True, host=host, time_scale=1.0,
        in_flight=1, keep_outputs=False,
    )  # fmt: skip
    size = 4 * Fanout().width * 4
    # the transfer's time includes the link latency (both ends): take it out for the rate
    rates = [size / (size / rate + 0) for *_, rate in _rates(result, size / 2)]
    seconds = [t["seconds"] for r in result.ranks for t in r["received"] if t["bytes"] >= size / 2]
    measured = statistics.median(size / (s - 2 * latency_s) for s in seconds)
    target = rate_bps / 8
    print("\n== emulated link (switched, one flow) ==")
    print(f"set {target / MB:.2f} MB/s, measured {measured / MB:.3f} MB/s over {len(rates)} transfers "
          f"of {size / MB:.1f} MB")  # fmt: skip
    return {"set_Bps": target, "measured_Bps": measured, "error": abs(measured - target) / target}


def medium_check(work: Path, host: dora_fx.Device, requests: int) -> dict[str, Any]:
    rate_bps = 200e6
    devices = ["a", "b", "c", "d"]
    network = Network(
        "wifi", media=(Medium("air", "shared", contention_efficiency=1.0),),
        links=tuple(Link(d, "air", rate_bps, rate_bps, 1e-3) for d in devices),
    )  # fmt: skip
    cluster = dora_fx.Cluster(tuple(_fast(d) for d in devices), network, name="medium")
    folder = work / "medium"
    compiled = dora_fx.compile(
        Fanout(), cluster, example_inputs=(torch.randn(4, 16),), num_stages=2, microbatches=1
    )
    data_parallel(compiled.save(folder), {0: (["a", "b"], [0.5, 0.5]), 1: (["c", "d"], [0.5, 0.5])})
    result = run_local(
        folder, [(torch.randn(4, 16),)] * requests, emulate=True, host=host, time_scale=1.0,
        in_flight=1, keep_outputs=False,
    )  # fmt: skip
    piece = 2 * Fanout().width * 4
    by_flow: dict[tuple[int, int], list[float]] = {}
    for dst, src, rate in _rates(result, piece / 2):
        by_flow.setdefault((src, dst), []).append(rate)
    flows = sorted(by_flow)
    rates = [statistics.median(by_flow[f]) for f in flows]
    split = [r / sum(rates) for r in rates]
    alone = network.flow_rates_bps([("a", "c")])[0] / 8
    model = network.flow_rates_bps([("a", "c"), ("b", "d")])
    print("\n== shared medium (one Wi-Fi AP, two flows from two processes at once) ==")
    print(f"{'flow':<14} {'MB/s':>8} {'share':>7} {'alone MB/s':>11} {'model MB/s':>11}")
    for (src, dst), rate, share, m in zip(flows, rates, split, model):
        print(f"rank {src}->rank {dst:<4} {rate / MB:>8.3f} {share:>7.1%} {alone / MB:>11.3f} {m / 8 / MB:>11.3f}")
    return {"split": split, "rates_Bps": rates, "model_Bps": [m / 8 for m in model]}


def _relative_error(measured: float, predicted: float) -> float:
    return abs(measured - predicted) / measured


def prediction_check(
    work: Path, host: dora_fx.Device, cases: list[tuple[str, str, int]], requests: int, batch: int
) -> list[dict[str, Any]]:
    """Each (model, scenario, stages): compile, run emulated, simulate the same plan and load."""
    from dora_fx import models
    from dora_fx.sim import SimConfig

    rows = []
    for model_name, scenario, stages in cases:
        model, example = models.build(model_name, batch=batch)
        cluster = dora_fx.scenarios.SCENARIOS[scenario]()
        compiled = dora_fx.compile(
            model, cluster, dora_fx.QoE(batch=batch), example_inputs=example, num_stages=stages
        )
        folder = compiled.save(work / f"{model_name}_{scenario}")
        in_flight = len(compiled.plan.devices)
        result = run_local(
            folder, [example] * requests, emulate=True, host=host, in_flight=in_flight,
            keep_outputs=False,
        )  # fmt: skip
        problem = compiled.state.problem
        assert problem is not None and problem.batch == batch
        # the schedule the ranks executed: its microbatches, overlap and contention policy
        sim = compiled.simulate(SimConfig(requests=requests, concurrency=in_flight))
        actions = result.action_report(sim)
        rows.append({
            "actions": actions,
            "model": model_name, "scenario": scenario, "plan": compiled.plan.to_text(),
            "measured_latency_s": result.latency_p50_s, "sim_latency_s": sim.latency_p50_s,
            "measured_throughput_rps": result.throughput_rps, "sim_throughput_rps": sim.throughput_rps,
            "latency_error": _relative_error(result.latency_p50_s, sim.latency_p50_s),
            "throughput_error": _relative_error(result.throughput_rps, sim.throughput_rps),
            "time_scale": result.time_scale,
            "schedule": compiled.state.schedule.header() if compiled.state.schedule else "",
            "busy": [(r["device"], r["busy_s"] / requests, r["predicted_item_s"]) for r in result.ranks],
            "sim_busy": {d: b / requests for d, b in sim.busy_s.items()},
        })  # fmt: skip
    print("\n== prediction: measured (emulated run) vs simulated ==")
    print(f"{'model':<12} {'scenario':<18} {'scale':>6} {'lat ms':>8} {'sim ms':>8} {'err':>6} "
          f"{'thr r/s':>8} {'sim r/s':>8} {'err':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<12} {r['scenario']:<18} {r['time_scale']:>6.2f} "
              f"{r['measured_latency_s'] * 1e3:>8.2f} {r['sim_latency_s'] * 1e3:>8.2f} "
              f"{r['latency_error']:>6.1%} {r['measured_throughput_rps']:>8.1f} "
              f"{r['sim_throughput_rps']:>8.1f} {r['throughput_error']:>6.1%}")  # fmt: skip
        print(f"    {r['schedule']}")
        print("    " + format_action_report(r["actions"]).replace("\n", "\n    "))
        for device, busy, predicted in r["busy"]:
            print(f"    {device:<12} busy/request {busy * 1e3:8.3f} ms   runtime-predicted "
                  f"{predicted * 1e3:8.3f} ms   simulator {r['sim_busy'].get(device, 0) * 1e3:8.3f} ms")  # fmt: skip
    return rows


PEER_CASES = [("gpt2", "small"), ("mobilenetv2", "small")]


def _peer_model(name: str, size: str, batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The zoo's model, except GPT-2 "small" (2 layers) gets 8 so that four evenly spaced
    stages exist: 8 layers, 128 wide, sequence 32."""
    from dora_fx import models

    if name != "gpt2" or size == "full":
        return models.build(name, size=size, batch=batch)
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=8, n_embd=128, n_head=4, vocab_size=512, n_positions=64, use_cache=False,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    tokens = torch.randint(0, 512, (batch, 32), generator=torch.Generator().manual_seed(0))
    return GPT2LMHeadModel(config).eval(), (tokens,)


def peer_check(
    work: Path, host: dora_fx.Device, cases: list[tuple[str, str]], requests: int, batch: int
) -> list[dict[str, Any]]:
    """Each (model, size) on emulated smart_home: torch.distributed.pipelining over the four
    devices in the scenario's order (evenly spaced SplitPoints, ScheduleGPipe) vs Dora's plan
    for QoE(objective="throughput"); same requests, batch, closed loop and emulation."""
    from dora_fx.peers.pipelining import even_split_points, run_pipelining

    rows = []
    for name, size in cases:
        model, example = _peer_model(name, size, batch)
        cluster = dora_fx.scenarios.smart_home()
        devices = [d.name for d in cluster.devices]
        generator = torch.Generator().manual_seed(1)
        stream = [
            tuple(
                torch.randint(0, 512, x.shape, generator=generator)
                if x.dtype == torch.int64
                else torch.randn(x.shape, generator=generator)
                for x in example
            )
            for _ in range(requests)
        ]
        window = len(devices)  # requests in flight, both systems
        points = even_split_points(model, len(devices))
        peer = run_pipelining(
            model, stream, devices, cluster=cluster, split_points=points, host=host,
            in_flight=window, keep_outputs=False,
        )  # fmt: skip
        qoe = dora_fx.QoE(objective="throughput", batch=batch)
        compiled = dora_fx.compile(model, cluster, qoe, example_inputs=example)
        folder = compiled.save(work / f"peer_{name}_{size}")
        dora = run_local(
            folder, stream, emulate=True, host=host, in_flight=window, keep_outputs=False
        )
        rows.append({
            "model": f"{name} ({size})", "split": points, "plan": compiled.plan.to_text(),
            "peer_throughput_rps": peer.throughput_rps, "peer_latency_s": peer.latency_p50_s,
            "dora_throughput_rps": dora.throughput_rps, "dora_latency_s": dora.latency_p50_s,
            "throughput_ratio": dora.throughput_rps / peer.throughput_rps,
            "latency_ratio": dora.latency_p50_s / peer.latency_p50_s,
            "peer_ranks": peer.ranks, "dora_ranks": dora.ranks,
        })  # fmt: skip
    print("\n== peer: torch.distributed.pipelining (GPipe, even split, 4 devices) vs Dora, "
          "emulated smart_home ==")  # fmt: skip
    print(f"{'model':<22} {'peer r/s':>9} {'peer ms':>8} {'dora r/s':>9} {'dora ms':>8} "
          f"{'thr x':>6} {'lat x':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<22} {r['peer_throughput_rps']:>9.1f} {r['peer_latency_s'] * 1e3:>8.2f} "
              f"{r['dora_throughput_rps']:>9.1f} {r['dora_latency_s'] * 1e3:>8.2f} "
              f"{r['throughput_ratio']:>6.2f} {r['latency_ratio']:>6.2f}")  # fmt: skip
        print(f"    peer split at {', '.join(r['split'])}")
        print("    dora " + r["plan"].replace("\n", "\n         "))
        for who in ("peer", "dora"):
            busy = ", ".join(
                f"{x['device']} {x['busy_s'] / requests * 1e3:.2f}" for x in r[f"{who}_ranks"]
            )
            print(f"    {who} busy ms/request: {busy}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--only-peer", action="store_true", help="skip the other checks")
    args = parser.parse_args(argv)
    started = time.monotonic()
    torch.set_num_threads(1)  # ranks run one thread each: calibrate the host the same way
    host = calibrate(quick=True)
    print(f"host (1 thread): dense {host.dense_flops_per_s / 1e9:.1f} GFLOP/s, other "
          f"{host.effective_other_flops_per_s / 1e9:.2f} GFLOP/s, memory "
          f"{host.memory_bandwidth_bytes_per_s / 1e9:.1f} GB/s, op overhead "
          f"{host.op_overhead_s * 1e6:.1f} us")  # fmt: skip
    n = 4 if args.quick else 8
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_dist_") as tmp:
        work = Path(tmp)
        if not args.only_peer:
            link = link_check(work, host, n)
            medium = medium_check(work, host, n)
            cases = [
                ("gpt2", "smart_home", 3), ("mobilenetv2", "smart_home", 3),
                ("gpt2", "edge_cluster", 3), ("mobilenetv2", "edge_cluster", 3),
            ]  # fmt: skip
            rows = prediction_check(work, host, cases, 4 * n, batch=4)
            summary = {
                "emulated_bandwidth_error": round(link["error"], 4),
                "shared_medium_split": [round(s, 4) for s in medium["split"]],
                "median_latency_error": round(statistics.median(r["latency_error"] for r in rows), 4),
                "median_throughput_error": round(
                    statistics.median(r["throughput_error"] for r in rows), 4
                ),
                # per action class (compute per stage, input, transfer, return), every case
                "action_class_median_error": round(statistics.median(
                    a.error for r in rows for a in r["actions"] if a.error is not None
                ), 4),
                "action_class_errors": {
                    f"{r['model']}/{r['scenario']}": {
                        a.label: round(a.error, 3) for a in r["actions"] if a.error is not None
                    }
                    for r in rows
                },
            }  # fmt: skip
        peers = peer_check(work, host, PEER_CASES, 2 * n, batch=4)
    best = max(peers, key=lambda r: r["throughput_ratio"])
    summary.update({
        "peer_throughput_ratio_best": round(best["throughput_ratio"], 3),
        "peer_best_model": best["model"],
        "peer_latency_ratio_best": round(best["latency_ratio"], 3),
        "peer_throughput_ratio": {r["model"]: round(r["throughput_ratio"], 3) for r in peers},
        "peer_latency_ratio": {r["model"]: round(r["latency_ratio"], 3) for r in peers},
        "wall_s": round(time.monotonic() - started, 1),
    })  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
