import json

import pytest
import torch

from dora_fx.cost_models.calibrate import (
    Measurement,
    annotated_graph,
    calibrate,
    fit_device,
    predict_forward_s,
    predict_graph_s,
)
from dora_fx.cost_models.device import Device
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
    assert {m["op_class"] for m in doc["measurements"]} == {"overhead", "copy", "elementwise", "matmul", "conv"}
    assert all(m["measured_s"] > 0 and m["predicted_s"] > 0 for m in doc["measurements"])
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
