"""Emulation pieces in one process: the shared-medium ledger, compute stretch, op pricing,
and the CLI's argument errors."""

from __future__ import annotations

import argparse
import time

import torch

import dora_fx
from dora_fx.cli.run import add_run_parser
from dora_fx.runtime.compute_emulation import ComputeStretch
from dora_fx.runtime.cost_recorder import CostRecorder, stage_time_s
from dora_fx.runtime.network_emulation import MediumLedger


def test_two_flows_on_one_resource_alternate_and_pay_for_contention(tmp_path):
    ledger = MediumLedger(tmp_path / "ledger", ["air:wifi"])
    now = time.monotonic() + 10.0  # in the future, so both flows are "active now"
    hops = [("air:wifi", 1e-3, 0.5)]  # 1 ms per bit; half the air is usable under contention
    first = ledger.reserve(hops, 1.0, now, flow=1)
    assert first == now + 1e-3  # alone: full rate
    second = ledger.reserve(hops, 1.0, now, flow=2)
    assert abs(second - (first + 2e-3)) < 1e-12  # queued behind flow 1 and contended
    ledger.close()


def test_ledger_is_shared_through_its_file(tmp_path):
    a = MediumLedger(tmp_path / "ledger", ["up:x", "down:y"])
    b = MediumLedger(tmp_path / "ledger", ["up:x", "down:y"])
    start = time.monotonic() + 10.0
    end = a.reserve([("up:x", 1.0, 1.0)], 2.0, start, flow=1)
    assert b.reserve([("up:x", 1.0, 1.0)], 1.0, start, flow=1) == end + 1.0
    a.close()
    b.close()


def test_compute_stretch_pads_cpu_time_by_its_factor():
    stretch = ComputeStretch(5.0)
    stretch.resume()
    deadline = time.thread_time() + 0.01
    while time.thread_time() < deadline:
        pass
    elapsed = stretch.settle()
    assert elapsed >= 5 * 0.01 * 0.95
    assert stretch.busy_cpu_s >= 0.01


def test_recorded_ops_are_priced_with_the_roofline():
    with CostRecorder() as recorder:
        torch.mm(torch.randn(64, 32), torch.randn(32, 16))
        torch.randn(1000).relu()
    dense = [op for op in recorder.ops if op.op_class == "dense"]
    assert dense[0].flops == 2 * 64 * 32 * 16
    device = dora_fx.Device("d", dense_flops_per_s=1e9, memory_bandwidth_bytes_per_s=1e12)
    assert stage_time_s(device, dense) == device.node_time_s(
        2 * 64 * 32 * 16, dense[0].bytes_moved, "dense"
    )


def test_cli_run_says_what_to_send(mlp_plan, capsys):
    parser = argparse.ArgumentParser()
    add_run_parser(parser.add_subparsers())
    args = parser.parse_args(["run", str(mlp_plan[2]), "--local", "--no-emulation"])
    assert args.func(args) == 1
    assert "--inputs FILE" in capsys.readouterr().err


def test_dilation_keeps_the_host_under_its_share_of_the_cores():
    from dora_fx.runtime.compute_emulation import HOST_LOAD, dilation, host_capacity_scale

    # 6 ms of CPU per item over all ranks, 1 ms bottleneck, 2 cores of which half are ours
    scale = host_capacity_scale(6e-3, 1e-3, inflation=2.0, cores=2)
    assert abs(scale - 6e-3 / (HOST_LOAD * 1.0 * 1e-3)) < 1e-9
    assert dilation(need=0.1, ranks=2, cpu_per_item_s=0.0, bottleneck_item_s=1.0) == 1.0


def test_measured_reference_is_the_stream_mean_once_there_are_enough_samples():
    from dora_fx.runtime.compute_emulation import measured_reference_s

    warmup = [1.0, 1.0, 1.0]
    assert measured_reference_s(warmup + [3.0], stream_start=3) == 1.5  # too few: all samples
    assert measured_reference_s(warmup + [2.0, 4.0] * 4, stream_start=3) == 3.0
    assert measured_reference_s([]) == 0.0


def test_cpu_samples_keep_a_window_with_the_reference_of_all_samples():
    """A rank keeps only the last REFERENCE_WINDOW samples, with the reference of the whole
    list: before the stream, early in it (too few: all samples) and far into it."""
    import random

    from dora_fx.runtime.compute_emulation import REFERENCE_WINDOW, CpuSamples, measured_reference_s

    rng = random.Random(0)
    samples, window = [], CpuSamples()
    assert window.reference_s() == 0.0
    warmup = 5
    for n in range(3 * REFERENCE_WINDOW):
        value = rng.uniform(0.5, 2.0)
        samples.append(value)
        window.append(value)
        for start in (0, warmup, n - 3, n + 1):
            assert window.reference_s(start) == measured_reference_s(samples, start), (n, start)
    assert len(window) == len(samples) and len(window._recent) == REFERENCE_WINDOW


def test_allocations_are_not_priced():
    x, mean, var = torch.randn(2, 3, 4, 4), torch.zeros(3), torch.ones(3)
    with CostRecorder() as recorder:
        torch.empty(1000)
        torch.nn.functional.batch_norm(x, mean, var, training=False)  # empty + native_batch_norm
    assert len(recorder.ops) == 1


AIR_S = 0.4  # each flow's air time alone: long against a loaded machine's scheduling hiccups


def _race(tmp_path, policy):
    """Two ranks' flows on one Wi-Fi medium: a bulk one (request 1) starts, a critical one
    (request 0) joins 20 ms later; when each one's last bit left, from the start."""
    from dora_fx.cost_models.network import Link, Medium, Network
    from dora_fx.runtime.network_emulation import LinkShaper, resource_keys

    network = Network(
        "wifi", media=(Medium("air", "shared", contention_efficiency=0.5),),
        links=tuple(Link(d, "air", 8e6, 8e6, 0.0) for d in "abcd"),
    )  # fmt: skip
    keys = resource_keys(network, list("abcd"))
    ledgers = [MediumLedger(tmp_path / f"ledger_{policy}", keys) for _ in range(2)]
    shapers = [LinkShaper(network, ledgers[i], 1.0, rank=i, policy=policy) for i in range(2)]
    left: dict[str, float] = {}
    start = time.monotonic()

    def done(name):
        return lambda: left.setdefault(name, time.monotonic() - start)

    nbytes = int(AIR_S * 8e6 / 8 / 2)  # AIR_S of air alone: up to the AP and down again
    shapers[0].submit(2, "a", "c", nbytes, lambda: None, priority=(1, 0, -1), on_left=done("bulk"))
    time.sleep(0.02)
    shapers[1].submit(
        3, "b", "d", nbytes, lambda: None, priority=(0, 0, -1), on_left=done("critical")
    )
    for shaper in shapers:
        shaper.close(10.0)
    for ledger in ledgers:
        ledger.close()
    return left, shapers[0].held_s


def test_critical_first_sends_the_critical_flow_first(tmp_path):
    left, held_s = _race(tmp_path, "critical-first")
    assert left["critical"] < left["bulk"]
    assert left["critical"] < 0.02 + AIR_S * 1.5  # about as fast as alone
    assert left["bulk"] > 2 * AIR_S * 0.9 and held_s > AIR_S / 2  # the bulk flow waited, no air lost


def test_fair_flows_share_the_medium_and_pay_for_contention(tmp_path):
    left, held_s = _race(tmp_path, "fair")
    assert left["critical"] > 0.02 + AIR_S * 1.5  # shared the air with the bulk flow
    assert held_s == 0.0


def test_registrations_of_more_critical_flows_hold_others_until_they_leave(tmp_path):
    ledger = MediumLedger(tmp_path / "ledger", ["air:wifi", "up:x"])
    assert ledger.register(1, (0, 0, -2), ["air:wifi"])
    assert ledger.held_until(2, (1, 0, -1), ["air:wifi"]) is not None  # less critical
    assert ledger.held_until(2, (1, 0, -1), ["up:x"]) is None  # another resource
    assert ledger.held_until(3, (0, 0, -2), ["air:wifi"]) is None  # as critical: shares
    assert ledger.held_until(3, (0, 0, -3), ["air:wifi"]) is None  # more critical
    ledger.unregister(1)
    assert ledger.held_until(2, (1, 0, -1), ["air:wifi"]) is None
    ledger.close()


def test_user_inputs_leave_the_source_and_outputs_go_to_the_sink():
    """Rank 0 stands for the plan's source and sink: the emulated network carries the inputs
    from the source device and the results to the sink device, free where the two are one."""
    from dora_fx.runtime.distributed.transport import INPUT_TAG, OUTPUT_TAG, message_devices
    from dora_fx.runtime.distributed.wiring import RankInfo, StageWiring

    table = [RankInfo(0, 0, 0, "jetson", (1.0,)), RankInfo(1, 1, 0, "laptop", (1.0,))]
    wiring = StageWiring(table, {0: {}, 1: {}}, {0: {}, 1: {}}, {0: 0}, {0: [0]}, {1: [0]})
    assert message_devices(wiring, table[0], 0, INPUT_TAG) == ("jetson", "jetson")
    assert message_devices(wiring, table[1], 0, OUTPUT_TAG) == ("laptop", "laptop")
    assert message_devices(wiring, table[0], 1, 7) == ("jetson", "laptop")
    wiring.source, wiring.sink = "phone", "phone"
    assert message_devices(wiring, table[0], 0, INPUT_TAG) == ("phone", "jetson")
    assert message_devices(wiring, table[1], 0, OUTPUT_TAG) == ("laptop", "phone")
    assert message_devices(wiring, table[0], 1, 7) == ("jetson", "laptop")
