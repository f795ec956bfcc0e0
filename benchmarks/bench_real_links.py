"""The simulator against runs over kernel-shaped links (not dora_fx's pacing), on a Linux
network-namespace testbed (``dora_fx.testbed``; needs root).

    python benchmarks/bench_real_links.py [--quick]

Each device is a namespace, each rank a torchrun node inside its device's namespace (c10d
rendezvous on rank 0's host), compute emulated (stretched to the device's predicted speed) and
the links shaped by ``tc`` (htb) at bandwidth / time_scale, the run's fixed dilation
(``RunConfig.network = "kernel"``: the runtime paces nothing between the hosts). One-way
latency is left out (no netem here): the clusters are the scenarios with latency 0 s, for the
plan, the simulator and the testbed alike.

1. Prediction: GPT-2 and MobileNetV2 (small configs, random weights) on smart_home and
   edge_cluster: each compiled, then run over the testbed shaped for the fixed dilation
   (``TIME_SCALE``, above what the ranks would pick here); latency and
   throughput against ``compiled.simulate`` at the same load (closed loop, one request in
   flight per rank), outputs against eager by request id, results returned to the sink.
2. Shaping: one bulk TCP flow over a shaped link, measured against the configured rate.
3. Peer: torch.distributed.pipelining (even split, ScheduleGPipe, four devices) vs Dora's
   throughput plan on the same namespaces and shaping.
4. A lost host: the runtime adapter's dispatcher over the testbed, a rank's namespace killed
   mid-run; lost and duplicated request ids, and the error naming rank, stage, device, host.

Prints tables; the last line is one JSON object with the figures. Namespaces are always torn
down (on errors and Ctrl-C too).
"""

from __future__ import annotations

import argparse
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
from dora_fx.artifact.manifest import read_plan_folder
from dora_fx.cost_models.calibrate import calibrate
from dora_fx.cost_models.device import Device
from dora_fx.runtime.distributed.launch import DistributedResult
from dora_fx.runtime.distributed.report import format_action_report
from dora_fx.runtime.distributed.wiring import rank_table
from dora_fx.sim import SimConfig
from dora_fx.testbed import available, run_peer, run_plan, shaped_for, without_latency

warnings.filterwarnings("ignore")
# Wall seconds per emulated second, fixed before the testbed is shaped (the links run at
# bandwidth / TIME_SCALE). Above what the ranks pick for these plans on this 2-core host
# (up to ~150 here); a rank whose compute cannot keep up shows as "compute overrun".
TIME_SCALE = 240.0
RUN_TIMEOUT_S = 60.0  # the ranks' P2P timeout: warm-up on a busy host is slow


def _relative_error(measured: float, predicted: float) -> float:
    return abs(measured - predicted) / measured


def _stream(example: tuple[Any, ...], count: int, seed: int) -> list[tuple[Any, ...]]:
    """``count`` distinct requests shaped like ``example`` (tokens stay in their range)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        out.append(tuple(
            torch.randint(0, int(x.max()) + 1, x.shape, generator=generator)
            if x.dtype == torch.int64 else torch.randn(x.shape, generator=generator)
            for x in example
        ))  # fmt: skip
    return out


def _leaves(value: Any) -> list[torch.Tensor]:
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    return [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def _max_diff(result: DistributedResult, model: nn.Module, stream: list[Any]) -> float:
    """Largest |run - eager| over every output of every request, matched by request id."""
    worst = 0.0
    with torch.no_grad():
        for rid, got in zip(result.request_ids, result.outputs):
            want = model(*stream[rid])
            for a, b in zip(_leaves(got), _leaves(want), strict=True):
                worst = max(worst, float((a - b).abs().max()))
    return worst


def _bandwidth(testbed: Any, cluster: dora_fx.Cluster, scale: float, src: str, dst: str) -> dict:
    """One bulk flow ``src -> dst``: measured (emulated b/s) vs the model's rate of that flow."""
    configured = cluster.network.flow_rates_bps([(src, dst)])[0]
    nbytes = max(int(configured / scale / 8 * 1.5), 1_000_000)  # 1.5 s of the shaped rate
    measured = testbed.measure_rate_bps(src, dst, nbytes, timeout_s=60) * scale
    return {"src": src, "dst": dst, "configured_bps": configured, "measured_bps": measured,
            "error": abs(measured - configured) / configured}  # fmt: skip


def prediction(
    work: Path, host: Device, cases: list[tuple[str, str]], requests: int, scale: float
) -> list[dict]:
    from dora_fx import models

    rows = []
    for k, (name, scenario) in enumerate(cases):
        model, example = models.build(name, batch=4)
        cluster = without_latency(dora_fx.scenarios.SCENARIOS[scenario]())
        compiled = dora_fx.compile(
            model, cluster, dora_fx.QoE(batch=4), example_inputs=example, num_stages=3
        )
        folder = compiled.save(work / f"{name}_{scenario}")
        table = rank_table(compiled.plan)
        ranks = len(table)
        stream = _stream(example, requests, seed=k)
        with shaped_for(cluster, scale, prefix=f"bp{k}") as testbed:
            link = _bandwidth(testbed, cluster, scale, table[0].device, table[1].device)
            # the way results come back: from the last stage to the sink
            back = _bandwidth(testbed, cluster, scale, table[-1].device, table[0].device)
            result = run_plan(
                testbed, folder, stream, time_scale=scale, host=host, in_flight=ranks,
                timeout_s=RUN_TIMEOUT_S, port=29800 + k,
            )  # fmt: skip
        sim = compiled.simulate(SimConfig(requests=requests, concurrency=ranks))
        problem = compiled.state.problem
        assert problem is not None
        sink = problem.sink or table[-1].device
        # rank 0 collects every answer on its host: they reached the sink when that is it
        returned = len(result.outputs) / requests if table[0].device == sink else 0.0
        rows.append({
            "model": name, "scenario": scenario, "plan": compiled.plan.to_text(),
            "time_scale": scale, "link": link, "back": back, "sink": sink, "sink_returned": returned,
            "measured_latency_s": result.latency_p50_s, "sim_latency_s": sim.latency_p50_s,
            "measured_throughput_rps": result.throughput_rps,
            "sim_throughput_rps": sim.throughput_rps,
            "latency_error": _relative_error(result.latency_p50_s, sim.latency_p50_s),
            "throughput_error": _relative_error(result.throughput_rps, sim.throughput_rps),
            "max_abs_diff": _max_diff(result, model, stream),
            "actions": result.action_report(sim), "wall_s": result.wall_s,
            "overrun": _overrun(result),
        })  # fmt: skip
        _print_prediction(rows[-1])
    return rows


def _overrun(result: DistributedResult) -> float:
    """The largest share of a rank's busy time its compute ran past the emulated time (the
    dilation was too small for it when this is large)."""
    return max((r["overrun_s"] / r["busy_s"] if r["busy_s"] else 0.0) for r in result.ranks)


def _print_prediction(r: dict) -> None:
    link = r["link"]
    print(f"\n== {r['model']} on {r['scenario']} over kernel-shaped links (time scale "
          f"{r['time_scale']:g}, run {r['wall_s']:.0f} s wall) ==")  # fmt: skip
    print("    " + r["plan"].replace("\n", "\n    "))
    print(f"    latency   {r['measured_latency_s'] * 1e3:8.2f} ms  simulated "
          f"{r['sim_latency_s'] * 1e3:8.2f} ms  error {r['latency_error']:6.1%}")  # fmt: skip
    print(f"    throughput {r['measured_throughput_rps']:7.1f} r/s simulated "
          f"{r['sim_throughput_rps']:8.1f} r/s error {r['throughput_error']:6.1%}")  # fmt: skip
    print(f"    bulk flow {link['src']}->{link['dst']}: {link['measured_bps'] / 1e6:.1f} Mb/s "
          f"(configured {link['configured_bps'] / 1e6:.1f}, error {link['error']:.1%})")  # fmt: skip
    back = r["back"]
    print(f"    bulk flow {back['src']}->{back['dst']}: {back['measured_bps'] / 1e6:.1f} Mb/s "
          f"(configured {back['configured_bps'] / 1e6:.1f}, error {back['error']:.1%})")  # fmt: skip
    print(f"    outputs vs eager by request id: max |diff| {r['max_abs_diff']:.2e}; results "
          f"at the sink ({r['sink']}): {r['sink_returned']:.0%}; compute overrun "
          f"{r['overrun']:.1%}")  # fmt: skip
    print("    " + format_action_report(r["actions"]).replace("\n", "\n    "))


def _peer_model(name: str, batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """GPT-2 of 8 layers (128 wide, sequence 32) so four evenly spaced stages exist, or the
    zoo's small MobileNetV2 (as bench_distributed's peer check)."""
    from dora_fx import models

    if name != "gpt2":
        return models.build(name, batch=batch)
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=8, n_embd=128, n_head=4, vocab_size=512, n_positions=64, use_cache=False,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    tokens = torch.randint(0, 512, (batch, 32), generator=torch.Generator().manual_seed(0))
    return GPT2LMHeadModel(config).eval(), (tokens,)


def peer(work: Path, host: Device, names: list[str], requests: int, scale: float) -> list[dict]:
    """On smart_home's namespaces: the peer over the four devices in the scenario's order vs
    Dora's plan for QoE(objective="throughput"); same requests, closed loop of four, shaping."""
    from dora_fx.peers.pipelining import even_split_points

    rows = []
    for k, name in enumerate(names):
        model, example = _peer_model(name, batch=4)
        cluster = without_latency(dora_fx.scenarios.smart_home())
        devices = [d.name for d in cluster.devices]
        qoe = dora_fx.QoE(objective="throughput", batch=4)
        compiled = dora_fx.compile(model, cluster, qoe, example_inputs=example)
        folder = compiled.save(work / f"peer_{name}")
        stream = _stream(example, requests, seed=10 + k)
        points = even_split_points(model, len(devices))
        with shaped_for(cluster, scale, prefix=f"bq{k}") as testbed:
            theirs = run_peer(
                testbed, model, stream, devices, cluster, time_scale=scale, host=host,
                split_points=points, in_flight=len(devices), timeout_s=RUN_TIMEOUT_S,
                port=29850 + 2 * k,
            )  # fmt: skip
            ours = run_plan(
                testbed, folder, stream, time_scale=scale, host=host, in_flight=len(devices),
                keep_outputs=False, timeout_s=RUN_TIMEOUT_S, port=29851 + 2 * k,
            )  # fmt: skip
        rows.append({
            "model": name, "split": points, "plan": compiled.plan.to_text(), "time_scale": scale,
            "peer_throughput_rps": theirs.throughput_rps, "peer_latency_s": theirs.latency_p50_s,
            "dora_throughput_rps": ours.throughput_rps, "dora_latency_s": ours.latency_p50_s,
            "throughput_ratio": ours.throughput_rps / theirs.throughput_rps,
            "latency_ratio": ours.latency_p50_s / theirs.latency_p50_s,
            "peer_overrun": _overrun(theirs), "dora_overrun": _overrun(ours),
        })  # fmt: skip
    print("\n== peer: torch.distributed.pipelining (GPipe, even split, 4 devices) vs Dora, "
          "smart_home namespaces, kernel-shaped links ==")  # fmt: skip
    print(f"{'model':<12} {'scale':>6} {'peer r/s':>9} {'peer ms':>8} {'dora r/s':>9} "
          f"{'dora ms':>8} {'thr x':>6} {'lat x':>6} {'overrun p/d':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<12} {r['time_scale']:>6g} {r['peer_throughput_rps']:>9.1f} "
              f"{r['peer_latency_s'] * 1e3:>8.2f} {r['dora_throughput_rps']:>9.1f} "
              f"{r['dora_latency_s'] * 1e3:>8.2f} {r['throughput_ratio']:>6.2f} "
              f"{r['latency_ratio']:>6.2f} {r['peer_overrun']:>5.1%}/{r['dora_overrun']:.1%}")  # fmt: skip
        print(f"    peer split at {', '.join(r['split'])}")
        print("    dora " + r["plan"].replace("\n", "\n         "))
    print("    (both return their results to the sink, the phone: the peer's last stage sends "
          "its outputs' bytes to its first, on the phone, over the same shaped links)")
    return rows


def lost_host(work: Path, requests: int) -> dict[str, Any]:
    """GPT-2 on edge_cluster: plan-a on jetson0..2 takes every request; jetson1's namespace
    is killed after a few answers; the dispatcher re-sends the unanswered ids to plan-b
    (jetson0, jetson3). Compute is not emulated (only the re-routing is measured)."""
    from dora_fx import models
    from dora_fx.adapter import MultiPlanDispatcher
    from dora_fx.adapter.compose import Composition
    from dora_fx.testbed.executor import TestbedExecutor

    model, example = models.build("gpt2", batch=4)
    cluster = without_latency(dora_fx.scenarios.edge_cluster())
    subsets = {"plan-a": ["jetson0", "jetson1", "jetson2"], "plan-b": ["jetson0", "jetson3"]}
    folders = {}
    for plan, names in subsets.items():
        sub = cluster
        for gone in set(cluster.device_names) - set(names):
            sub = sub.without_device(gone)
        compiled = dora_fx.compile(
            model, sub, dora_fx.QoE(batch=4), example_inputs=example, num_stages=len(names)
        )
        folders[plan] = compiled.save(work / f"lost_{plan}")

    def composition(rates: dict[str, float]) -> Composition:
        return Composition(rates, 1.0, "throughput", None, 0.0, ())

    stream = dict(enumerate(_stream(example, requests, seed=99)))
    with shaped_for(cluster, 200.0, prefix="bk") as testbed:
        executor = TestbedExecutor(
            testbed, folders, kill={"plan-a": ("jetson1", 3)}, emulate=False,
            time_scale=1.0, warmup=1, timeout_s=20.0, port=29900,
        )  # fmt: skip
        dispatcher = MultiPlanDispatcher(
            subsets, composition({"plan-a": 1.0, "plan-b": 0.0}), executor,
            lambda dead: composition({"plan-a": 0.0, "plan-b": 1.0}),
        )  # fmt: skip
        result = dispatcher.run(stream)
    with torch.no_grad():
        wrong = sum(
            any(
                not torch.allclose(a, b, atol=1e-4, rtol=1e-4)
                for a, b in zip(_leaves(out), _leaves(model(*stream[rid])), strict=True)
            )
            for rid, out in result.outputs.items()
        )
    error = str(executor.errors[0]) if executor.errors else ""
    print("\n== a lost host: jetson1's namespace killed mid-run, the dispatcher re-routes ==")
    print("    " + result.summary().replace("\n", "\n    "))
    print(f"    error: {error[:400]}")
    victim = next(r for r in rank_table(read_plan_folder(folders["plan-a"]).plan)
                  if r.device == "jetson1")  # fmt: skip
    named = all(
        s in error for s in (f"rank {victim.rank}", f"stage {victim.stage}", "'jetson1'",
                             testbed.address("jetson1"))
    )  # fmt: skip
    return {
        "lost_requests": len(result.lost),
        "duplicated_requests": result.duplicates,
        "resent": len(result.resent),
        "wrong_answers": wrong,
        "error_names_rank_stage_device_host": named,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer cases and requests")
    parser.add_argument("--peer-models", default="gpt2",
                        help="comma-separated models for the peer check (gpt2, mobilenetv2)")
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE,
                        help=f"the runs' fixed dilation (default {TIME_SCALE:g})")  # fmt: skip
    args = parser.parse_args(argv)
    ok, why = available()
    if not ok:
        print(f"the namespace testbed cannot be made here: {why}")
        print(json.dumps({"skipped": why}))
        return 1
    started = time.monotonic()
    torch.set_num_threads(1)  # ranks run one thread each: calibrate the host the same way
    host = calibrate(quick=True)
    cases = [("gpt2", "smart_home"), ("mobilenetv2", "smart_home"),
             ("gpt2", "edge_cluster"), ("mobilenetv2", "edge_cluster")]  # fmt: skip
    if args.quick:
        cases = [("gpt2", "smart_home"), ("mobilenetv2", "edge_cluster")]
    requests = 8 if args.quick else 16
    with tempfile.TemporaryDirectory(prefix="bench_links_") as tmp:
        work = Path(tmp)
        rows = prediction(work, host, cases, requests, args.time_scale)
        # GPT-2 only: each testbed run costs about a minute of startup on this 2-core host
        # (torchrun agents and workers importing torch); --peer-models adds others
        names = args.peer_models.split(",")
        peers = peer(work, host, names, requests, args.time_scale)
        lost = lost_host(work, 12 if args.quick else 24)
    print("\n== summary: simulated vs measured over kernel-shaped links ==")
    print(f"{'model':<12} {'scenario':<14} {'scale':>6} {'lat ms':>8} {'sim ms':>8} {'err':>6} "
          f"{'thr r/s':>8} {'sim r/s':>8} {'err':>6} {'link err':>8} {'back err':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<12} {r['scenario']:<14} {r['time_scale']:>6g} "
              f"{r['measured_latency_s'] * 1e3:>8.2f} {r['sim_latency_s'] * 1e3:>8.2f} "
              f"{r['latency_error']:>6.1%} {r['measured_throughput_rps']:>8.1f} "
              f"{r['sim_throughput_rps']:>8.1f} {r['throughput_error']:>6.1%} "
              f"{r['link']['error']:>8.1%} {r['back']['error']:>8.1%}")  # fmt: skip
    print("one-way latency: left out (tc here has no netem); the clusters have 0 s latency in "
          "the plan, the simulator and the testbed alike")
    switched = [r[k]["error"] for r in rows if r["scenario"] == "edge_cluster" for k in ("link", "back")]
    shared = [r[k]["error"] for r in rows if r["scenario"] == "smart_home" for k in ("link", "back")]
    best = max(peers, key=lambda r: r["throughput_ratio"])
    summary = {
        "median_latency_error": round(statistics.median(r["latency_error"] for r in rows), 4),
        "median_throughput_error": round(
            statistics.median(r["throughput_error"] for r in rows), 4
        ),
        "shaped_bandwidth_error": round(max(switched or shared), 4),
        "shaped_air_error": round(max(shared), 4) if shared else None,
        "peer_throughput_ratio_best": round(best["throughput_ratio"], 3),
        "peer_best_model": best["model"],
        "peer_throughput_ratio": {r["model"]: round(r["throughput_ratio"], 3) for r in peers},
        "lost_requests": lost["lost_requests"],
        "duplicated_requests": lost["duplicated_requests"],
        "wrong_answers_after_loss": lost["wrong_answers"],
        "error_names_rank_stage_device_host": lost["error_names_rank_stage_device_host"],
        "sink_returned": round(min(r["sink_returned"] for r in rows), 4),
        "outputs_max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "errors": {f"{r['model']}/{r['scenario']}": [round(r["latency_error"], 3),
                   round(r["throughput_error"], 3)] for r in rows},  # fmt: skip
        "time_scales": {f"{r['model']}/{r['scenario']}": r["time_scale"] for r in rows},
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
