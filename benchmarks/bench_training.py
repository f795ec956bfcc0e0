"""Training benchmark: transparency, distributed training, the planner and the peer.

    python benchmarks/bench_training.py [--quick]

1. Transparency, in process: every zoo and Hugging Face model of the spine (small configs,
   dropout off) compiled with mode="train" at 2-3 stages and 2 microbatches; the gradients of
   one train_step against plain PyTorch's, and the losses of 3 SGD steps. The same models
   trained one process per stage (not emulated): losses and final weights against plain.
2. Distributed, emulated: models x scenarios planned for training (the planner's schedule and
   microbatches, SGD), one process per device (gloo), device time emulated, 8 steps; the
   losses against plain training and the measured iteration time (median of the steps after
   the first) against the training simulator's.
3. Failure: a rank killed mid-run (SIGKILL), the run resumed from its last checkpoint; steps
   missing or applied twice, final weights against plain training.
4. Peer: torch.distributed.pipelining training (even split, Schedule1F1B, GPipe if 1F1B hangs)
   on the same emulated cluster, same batch; samples/s against Dora's plan.
5. Planner: GPT-2 small x 8 devices, a training problem (benchmarks/bench_train_planner.py has
   the gaps against exhaustive enumeration and the baselines).

Prints tables; the last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from typing import Any

import torch

import dora_fx
from dora_fx import models
from dora_fx.cost_models.calibrate import calibrate
from dora_fx.peers.pipelining_train import peer_training_throughput
from dora_fx.runtime.distributed.train_config import KILL_ENV
from dora_fx.runtime.distributed.train_launch import TrainingRankLost
from dora_fx.sim.training import simulate_training
from dora_fx.training_tasks import training_task, without_dropout

warnings.filterwarnings("ignore")
SPINE = ("mlp", "cnn", "transformer", "gpt2", "bert", "vit", "mobilenetv2", "resnet", "llama")
BATCH_NORM = {"cnn", "mobilenetv2", "resnet"}  # microbatches > 1 normalize per microbatch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _floored_error(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """Max relative error over the tensors of ``theirs`` (floating ones), each against its own
    largest entry floored at 1e-6 of the largest of all (a gradient zero by symmetry, as ViT's
    key biases before the softmax, or a bias it leaves at zero is rounding noise of 1e-11 on
    both sides)."""
    theirs = {k: t for k, t in theirs.items() if t.is_floating_point()}
    floor = 1e-6 * max(float(t.abs().max()) for t in theirs.values())
    return max(
        float((ours[k] - t).abs().max()) / max(float(t.abs().max()), floor) for k, t in theirs.items()
    )


def _grad_error(ours: dict[str, torch.nn.Parameter], plain: torch.nn.Module) -> float:
    """``_floored_error`` of the gradients."""
    grads = {k: p.grad for k, p in plain.named_parameters() if p.grad is not None}
    return _floored_error({k: ours[k].grad for k in grads}, grads)


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
            grad_err = _grad_error(dict(compiled.named_parameters()), plain)
        loss_err = max(loss_err, abs(float(ours.detach()) - float(theirs.detach())) / abs(float(theirs.detach())))
        for opt in (ours_opt, plain_opt):
            opt.step()
            opt.zero_grad()
    return {"model": name, "stages": len(compiled.stages), "microbatches": microbatches,
            "grad_rel_err": grad_err, "loss_rel_err": loss_err}  # fmt: skip


def transparency_table(names: tuple[str, ...], steps: int) -> list[dict[str, Any]]:
    rows = [transparency(n, 3 if n != "mlp" else 2, steps) for n in names]
    _print_errors("in process (train_step vs plain PyTorch, SGD)", rows, ("grad", "loss"))
    return rows


def _print_errors(title: str, rows: list[dict[str, Any]], errors: tuple[str, ...]) -> None:
    print(f"\n== transparency, {title} ==")
    print(f"{'model':<12} {'stages':>6} {'mb':>3} " + " ".join(f"{e + ' rel err':>15}" for e in errors))
    for r in rows:
        print(f"{r['model']:<12} {r['stages']:>6} {r['microbatches']:>3} "
              + " ".join(f"{r[e + '_rel_err']:>15.2e}" for e in errors))  # fmt: skip


def _plain_losses(name: str, steps: int, batch: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    model, inputs = models.build(name, "small", batch=batch)
    without_dropout(model).train()
    loss_fn, target = training_task(name, model, inputs)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, model.state_dict()


def _compiled(name: str, scenario: str, batch: int, **pins: Any) -> tuple[Any, tuple[Any, ...], Any]:
    model, inputs = models.build(name, "small", batch=batch)
    without_dropout(model).train()
    loss_fn, target = training_task(name, model, inputs)
    qoe = dora_fx.QoE(objective="throughput", batch=batch)
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.SCENARIOS[scenario](), qoe, example_inputs=inputs,
        mode="train", loss_fn=loss_fn, optimizer="sgd", **pins,
    )  # fmt: skip
    return compiled, inputs, target


def distributed_transparency(names: tuple[str, ...], steps: int, batch: int) -> list[dict[str, Any]]:
    """Every model trained one process per stage (not emulated), against plain training: the
    losses of ``steps`` SGD steps and the final weights."""
    rows = []
    for name in names:
        microbatches = 1 if name in BATCH_NORM else 2
        stages = 2 if name == "mlp" else 3
        compiled, inputs, target = _compiled(name, "edge_cluster", batch, num_stages=stages,
                                             microbatches=microbatches)  # fmt: skip
        result = compiled.train_distributed([(inputs, target)], steps=steps, timeout_s=120.0)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the ranks: MobileNetV2's dead BN channels amplify the
        try:  # rounding of another thread count to an 18% loss difference by step 3
            losses, plain = _plain_losses(name, steps, batch)
        finally:
            torch.set_num_threads(threads)
        rows.append({
            "model": name, "stages": stages, "microbatches": microbatches,
            "loss_rel_err": max(abs(a - b) / abs(b) for a, b in zip(result.losses, losses)),
            "weight_rel_err": _floored_error(result.state_dict, plain),
        })  # fmt: skip
    _print_errors("distributed (one process per stage, gloo; SGD)", rows, ("loss", "weight"))
    return rows


def distributed(cases: list[tuple[str, str, dict[str, Any]]], host: Any, steps: int, batch: int) -> list[dict[str, Any]]:
    rows = []
    for name, scenario, pins in cases:
        compiled, inputs, target = _compiled(name, scenario, batch, **pins)
        result = compiled.train_distributed(
            [(inputs, target)], steps=steps, emulate=True, host=host, timeout_s=120.0,
        )  # fmt: skip
        plain, _ = _plain_losses(name, steps, batch)
        t = compiled.state.training
        sim = simulate_training(
            compiled.state.plan, compiled.state.problem, microbatches=t.microbatches, schedule=t.schedule
        ).iteration_s
        measured = result.iteration_s_median
        rows.append({
            "model": name, "scenario": scenario, "plan": compiled.plan.to_text().replace("\n", " | "),
            "schedule": f"{t.schedule} x{t.microbatches}", "stages": len(compiled.stages),
            "loss_rel_err": max(abs(a - b) / abs(b) for a, b in zip(result.losses, plain)),
            "simulated_s": sim, "measured_s": measured, "iteration_error": abs(measured - sim) / sim,
            "samples_per_s": batch / measured, "compiled": compiled, "inputs": inputs, "target": target,
        })  # fmt: skip
    print("\n== distributed training, emulated (one process per device, gloo) ==")
    print(f"{'model':<12} {'scenario':<13} {'stages':>6} {'schedule':<10} {'loss err':>9} "
          f"{'sim ms':>8} {'meas ms':>8} {'error':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<12} {r['scenario']:<13} {r['stages']:>6} {r['schedule']:<10} "
              f"{r['loss_rel_err']:>9.1e} {1e3 * r['simulated_s']:>8.2f} {1e3 * r['measured_s']:>8.2f} "
              f"{r['iteration_error']:>6.1%}")  # fmt: skip
    return rows


def kill_and_resume(host: Any, steps: int, batch: int, tmp: str) -> dict[str, Any]:
    """Rank 1 killed as step 2 starts; resumed from the newest complete checkpoint."""
    import os

    compiled, inputs, target = _compiled("transformer", "edge_cluster", batch, num_stages=2, microbatches=2)
    data = [(inputs, target)]
    options = {"checkpoint_dir": tmp, "checkpoint_every": 1, "timeout_s": 60.0}
    os.environ[KILL_ENV] = "1:2"
    try:
        compiled.train_distributed(data, steps=steps, **options)
        raise AssertionError("the killed rank did not end the run")
    except TrainingRankLost as lost:
        failure = lost
    finally:
        del os.environ[KILL_ENV]
    resumed = compiled.train_distributed(data, steps=steps, resume_from=tmp, **options)
    done_before = int(failure.checkpoint.name.split("_")[-1]) if failure.checkpoint else 0
    applied = list(range(done_before)) + list(resumed.steps)
    lost_steps = len(set(range(steps)) - set(applied)) + (len(applied) - len(set(applied)))
    _, plain = _plain_losses("transformer", steps, batch)
    weight_err = max(_rel(resumed.state_dict[k], v) for k, v in plain.items() if v.is_floating_point())
    print("\n== a rank killed, the run resumed from its checkpoint ==")
    print(f"error: {str(failure).splitlines()[0][:160]}")
    print(f"rank {failure.rank}, stage {failure.stage}, device {failure.device}, step {failure.step}; "
          f"resumed from {done_before} steps done, ran steps {resumed.steps}; lost or doubled "
          f"steps {lost_steps}; final weights vs plain {weight_err:.1e}")  # fmt: skip
    return {"lost_steps": lost_steps, "resumed_weight_rel_err": weight_err}


def _peer_devices(model: Any, names: Any) -> list[str]:
    """The cluster's devices in order, as many as the model has repeated layers to split
    evenly (what a pipelining user can do with ``n // stages`` layers per stage)."""
    from dora_fx.peers.pipelining import even_split_points

    for k in range(len(names), 1, -1):
        try:
            even_split_points(model, k)
            return list(names[:k])
        except ValueError:
            continue
    return list(names[:2])


def _peer_microbatches(batch: int, stages: int) -> int:
    """The fewest equal microbatches 1F1B can run on ``stages`` stages (at least one each)."""
    return next((m for m in range(stages, batch + 1) if batch % m == 0), batch)


def peer(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        compiled = r["compiled"]
        loss_fn = compiled.loss_fn
        model, _ = models.build(r["model"], "small", batch=len(r["target"]))
        without_dropout(model).train()
        devices = _peer_devices(model, compiled.cluster.device_names)
        figures = peer_training_throughput(
            model, r["inputs"], r["target"], compiled.cluster, loss_fn, steps=3, devices=devices,
            microbatches=_peer_microbatches(len(r["target"]), len(devices)),
        )  # fmt: skip
        out.append({**{k: r[k] for k in ("model", "scenario", "samples_per_s")}, "peer": figures})
    print("\n== peer: torch.distributed.pipelining training, same emulated cluster ==")
    print(f"{'model':<12} {'scenario':<13} {'peer schedule':<14} {'peer sps':>9} {'dora sps':>9} {'ratio':>6}")
    for o in out:
        ratio = o["samples_per_s"] / o["peer"]["samples_per_s"]
        o["ratio"] = ratio
        print(f"{o['model']:<12} {o['scenario']:<13} {o['peer']['schedule_used']:<14} "
              f"{o['peer']['samples_per_s']:>9.1f} {o['samples_per_s']:>9.1f} {ratio:>6.2f}")  # fmt: skip
        if o["peer"].get("note"):
            print(f"  note: {o['peer']['note']}")
    return out


def plan_time() -> float:
    from dora_fx.analysis.problem import TrainingSpec

    model, inputs = models.build("gpt2", "full", batch=2)
    state = dora_fx.compiler.pipeline.front_end(model, inputs)
    blocks, input_bytes = state.chain.at(32)
    problem = dora_fx.analysis.problem.Problem(
        blocks, dora_fx.scenarios.edge_cluster(8), dora_fx.QoE(objective="throughput", batch=32),
        32, input_bytes, training=TrainingSpec("adamw"),
    )  # fmt: skip
    from dora_fx.planner import solve

    solve(problem)
    started = time.perf_counter()
    plan_set = solve(problem)
    seconds = time.perf_counter() - started
    print(f"\nplanner: GPT-2 small x 8 devices, training, batch 32: {seconds:.3f} s, "
          f"certified gap {plan_set.best.gap:.2%}")  # fmt: skip
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer models and steps")
    args = parser.parse_args(argv)
    started = time.monotonic()
    names = ("mlp", "transformer", "gpt2") if args.quick else SPINE
    rows = transparency_table(names, steps=2 if args.quick else 3)
    spread = distributed_transparency(names, steps=2 if args.quick else 3, batch=8)
    torch.set_num_threads(1)  # ranks run one thread each: calibrate the host the same way
    host = calibrate(quick=True)
    cases = [
        ("gpt2", "smart_home", {}), ("transformer", "edge_cluster", {"num_stages": 2}),
        ("mlp", "smart_home", {"num_stages": 3, "microbatches": 4}),
    ]  # fmt: skip
    dist = distributed(cases[:2] if args.quick else cases, host, steps=16, batch=8)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_train_ckpt_") as tmp:
        failure = kill_and_resume(host, steps=4, batch=8, tmp=tmp)
    peers = peer(dist)
    summary: dict[str, Any] = {
        "grad_max_rel_err": max(r["grad_rel_err"] for r in rows),
        "loss_max_rel_err": max(r["loss_rel_err"] for r in rows),
        "distributed_loss_max_rel_err": max(r["loss_rel_err"] for r in [*dist, *spread]),
        "distributed_weight_max_rel_err": max(r["weight_rel_err"] for r in spread),
        "median_iteration_error": statistics.median(r["iteration_error"] for r in dist),
        "iteration_errors": {f"{r['model']}/{r['scenario']}": round(r["iteration_error"], 4) for r in dist},
        "peer_throughput_ratio_best": max(p["ratio"] for p in peers),
        "peer_schedules": sorted({p["peer"]["schedule_used"] for p in peers}),
        "peer_1f1b_hung": any(p["peer"]["hung_1f1b"] for p in peers),
        **failure,
        "plan_s": plan_time(),
    }
    summary["bench_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
