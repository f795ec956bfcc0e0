import json

import pytest
import torch

from dora_fx.compiler.predict import annotated_graph, predict_forward_s, predict_graph_s
from dora_fx.cost_models.calibrate import Measurement, calibrate, fit_device
from dora_fx.cost_models.device import Device
from dora_fx.cost_models.fit import _non_increasing
from dora_fx.cost_models.microbench import _measure_part
from dora_fx.models import MLP


def test_fit_recovers_a_known_roofline():
    """Measurements generated from a known device fit back to that device."""
    truth = Device("t", dense_flops_per_s=50e9, other_flops_per_s=2e9, memory_bandwidth_bytes_per_s=5e9, op_overhead_s=3e-6)
    rows = [Measurement("tiny", "overhead", 1, 12, truth.op_overhead_s)]
    for n in (1e6, 4e6):
        rows.append(Measurement("copy", "copy", 0, 8 * n, truth.node_time_s(0, 8 * n, "other")))
        # compute-bound elementwise op sets the other-ops roof
        rows.append(Measurement("heavy", "elementwise", 100 * n, 8 * n, truth.node_time_s(100 * n, 8 * n, "other")))
    for f in (1e9, 8e9):
        rows.append(Measurement("mm", "matmul", f, 1e6, truth.node_time_s(f, 1e6, "dense")))
    fitted = fit_device(rows, "t")
    assert fitted.dense_flops_per_s == pytest.approx(50e9)
    assert fitted.other_flops_per_s == pytest.approx(2e9)
    assert fitted.op_overhead_s == pytest.approx(3e-6)
    for r in rows:
        assert r.predicted_s(fitted) == pytest.approx(r.measured_s, rel=0.35)


def test_calibrate_writes_a_profile_that_loads(tmp_path):
    path = tmp_path / "host.json"
    device = calibrate(path, quick=True, repeats=1, busy_power_w=20.0, idle_power_w=4.0)
    doc = json.loads(path.read_text())
    assert {m["op_class"] for m in doc["measurements"]} == {"overhead", "fault", "copy", "elementwise", "matmul", "conv"}
    assert all(m["measured_s"] > 0 for m in doc["measurements"])
    # every row is predicted; first-touch rows below the fresh-page threshold cost nothing
    assert all(m["predicted_s"] > 0 or m["op_class"] == "fault" for m in doc["measurements"])
    assert doc["host"]["torch"] == torch.__version__
    loaded = Device.from_profile(path)
    assert loaded == device and loaded.kind == "host" and loaded.busy_power_w == 20.0


def test_prediction_sums_node_rooflines():
    model = MLP(width=32, depth=2).eval()
    x = torch.randn(4, 32)
    device = Device("d", dense_flops_per_s=1e9, other_flops_per_s=1e9, memory_bandwidth_bytes_per_s=1e12, op_overhead_s=0.0)
    gm, symbols, batch = annotated_graph(model, (x,))
    by_class = predict_graph_s(gm, symbols, device, batch)
    # three linears 32->32, 32->32, 32->10 at batch 4, compute-bound at 1 GFLOP/s
    dense_flops = 2 * 4 * 32 * (32 + 32 + 10) + 4 * (32 + 32 + 10)
    assert by_class["dense"] == pytest.approx(dense_flops / 1e9, rel=1e-9)
    assert predict_forward_s(model, (x,), device) == pytest.approx(sum(by_class.values()))
    # doubling the batch doubles the compute
    assert predict_graph_s(gm, symbols, device, 2 * batch)["dense"] == pytest.approx(2 * by_class["dense"])


MB = 2**20


def test_fit_recovers_curve_fresh_pages_and_dense_bandwidth():
    """A host with a size-dependent bandwidth, page faults above 30 MB and slow depthwise
    convolutions: its own (noise-free) measurements fit back to it."""
    truth = Device(
        "t",
        dense_flops_per_s=50e9,
        other_flops_per_s=2e9,
        memory_bandwidth_bytes_per_s=10e9,
        op_overhead_s=3e-6,
        bandwidth_curve=((1 * MB, 20e9), (40 * MB, 8e9)),
        dense_bandwidth_bytes_per_s=2e9,
        page_fault_bytes_per_s=2e9,
        fresh_output_bytes=30 * MB,
    )
    rows = [Measurement("tiny", "overhead", 1, 12, truth.op_overhead_s)]
    for size in (8, 16, 24, 36, 48):
        out = size * MB
        rows.append(Measurement(f"touch {size}", "fault", 0, out, max(truth.fresh_pages_s(out), 1e-7), out))
    for size in (1, 40):
        out = size * MB
        n = out / 4
        for name, op_class, flops, moved in (
            ("clone", "copy", 0.0, 2 * out),
            ("hardtanh", "elementwise", 2 * n, 2 * out),
            ("heavy", "elementwise", 100 * n, 2 * out),
        ):
            t = truth.node_time_s(flops, moved, "other", out)
            rows.append(Measurement(f"{name} {size}", op_class, flops, moved, t, out))
    for f in (1e9, 8e9):
        rows.append(Measurement("mm", "matmul", f, 1e6, truth.node_time_s(f, 1e6, "dense", 1e5), 1e5))
    for f, q in ((2e7, 1e7), (1e10, 1e7), (4e7, 2e7)):  # depthwise, regular, depthwise
        rows.append(Measurement("conv", "conv", f, q, truth.node_time_s(f, q, "dense", q / 2), q / 2))
    fitted = fit_device(rows, "t")
    assert fitted.op_overhead_s == pytest.approx(3e-6)
    assert fitted.page_fault_bytes_per_s == pytest.approx(2e9)
    assert 24 * MB < fitted.fresh_output_bytes <= 36 * MB
    assert fitted.other_flops_per_s == pytest.approx(2e9)
    assert [q for q, _ in fitted.bandwidth_curve] == [1 * MB, 40 * MB]
    assert [b for _, b in fitted.bandwidth_curve] == pytest.approx([20e9, 8e9])
    assert fitted.dense_flops_per_s == pytest.approx(50e9)
    assert fitted.dense_bandwidth_bytes_per_s == pytest.approx(2e9)
    for r in rows:
        assert r.predicted_s(fitted) == pytest.approx(r.measured_s, rel=1e-6, abs=1e-6)


def test_curve_is_made_non_increasing_keeping_total_time():
    points = [(1e6, 10e9, 1e8), (4e6, 20e9, 1e8), (16e6, 5e9, 1e8)]
    curve = _non_increasing(points)
    assert [b for _, b in curve] == sorted((b for _, b in curve), reverse=True)
    # the violating pair is pooled: 2e8 bytes over 1e8/10e9 + 1e8/20e9 seconds
    assert curve[0][1] == curve[1][1] == pytest.approx(2e8 / (1e8 / 10e9 + 1e8 / 20e9))
    assert curve[2] == (16e6, 5e9)
    assert _non_increasing(points[::2]) == [(1e6, 10e9), (16e6, 5e9)]


def test_calibrated_host_uses_a_non_increasing_curve(tmp_path):
    """One real (quick) calibration: the fitted curve falls with size and the profile keeps it."""
    device = calibrate(tmp_path / "host.json", quick=True, repeats=1)
    # (on a loaded machine a point may be unidentified, so the curve may have fewer points)
    bandwidths = [b for _, b in device.bandwidth_curve]
    assert bandwidths == sorted(bandwidths, reverse=True)
    assert all(b <= bandwidths[0] for b in bandwidths) and device.memory_bandwidth_bytes_per_s > 0
    assert Device.from_profile(tmp_path / "host.json").bandwidth_curve == device.bandwidth_curve


def test_unknown_calibration_part():
    with pytest.raises(ValueError, match="unknown calibration part"):
        _measure_part("nope", 1, True)


def test_fresh_page_threshold_ignores_a_noisy_small_size():
    from dora_fx.cost_models.fit import _fit_fresh_pages

    def touch(mb, seconds):
        return Measurement(f"touch {mb}", "fault", 0, mb * MB, seconds, mb * MB)

    rows = [touch(8, 3e-3), touch(16, 1e-7), touch(24, 1e-7), touch(36, 18e-3), touch(48, 24e-3)]
    rate, threshold = _fit_fresh_pages(rows)
    assert 24 * MB < threshold < 36 * MB
    assert rate == pytest.approx(84 * MB / 42e-3)
    assert _fit_fresh_pages([touch(8, 1e-7), touch(16, 1e-7)]) == (None, None)
    assert _fit_fresh_pages([touch(8, 3e-3), touch(16, 1e-7)]) == (None, None)


def test_sustained_timing_calls_each_kernel_round_robin_and_means():
    from dora_fx.cost_models.calibrate import sustained_call_s

    order: list[str] = []
    seconds = sustained_call_s([lambda: order.append("a"), lambda: order.append("b")], 0.0)
    # two warm-up calls each, then at least three rounds, always alternating
    assert order[:4] == ["a", "a", "b", "b"]
    assert order[4:] == ["a", "b"] * ((len(order) - 4) // 2) and len(order) >= 10
    assert len(seconds) == 2 and all(0 < s < 1e-3 for s in seconds)
