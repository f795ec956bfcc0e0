import json

import pytest
import torch

from dora_fx.cost_models.device import PROFILE_FORMAT, Device
from dora_fx.errors import ClusterError, ProfileError


def make(**changes):
    spec = dict(
        name="dev",
        dense_flops_per_s=100e9,
        other_flops_per_s=10e9,
        memory_bandwidth_bytes_per_s=10e9,
        op_overhead_s=1e-6,
    )
    spec.update(changes)
    return Device(**spec)


def test_node_time_is_a_roofline_per_op_class():
    d = make()
    # compute-bound dense node: 1e9 FLOPs at 100 GFLOP/s beats 1 MB at 10 GB/s
    assert d.node_time_s(1e9, 1e6, "dense") == pytest.approx(1e-6 + 1e-2)
    # memory-bound other node: 1e6 FLOPs at 10 GFLOP/s < 1e8 bytes at 10 GB/s
    assert d.node_time_s(1e6, 1e8, "other") == pytest.approx(1e-6 + 1e-2)
    # other ops run at their own, lower rate
    assert d.node_time_s(1e9, 0, "other") == pytest.approx(1e-6 + 0.1)
    assert d.node_time_s(1e12, 1e12, "view") == 0.0


def test_efficiencies_scale_the_peaks():
    d = make(dense_efficiency=0.5, memory_efficiency=0.25)
    assert d.sustained_dense_flops_per_s == 50e9
    assert d.sustained_bandwidth_bytes_per_s == 2.5e9
    assert d.node_time_s(1e9, 0, "dense") == pytest.approx(1e-6 + 0.02)


def test_other_rate_defaults_to_a_quarter_of_dense():
    assert make(other_flops_per_s=None).effective_other_flops_per_s == 25e9


def test_block_time_two_rooflines_and_single_roofline():
    d = make(op_overhead_s=0.0)
    # dense part compute-bound (1e9 / 1e11 = 10 ms), other part memory-bound (1e8 B / 1e10 = 10 ms)
    two = d.block_time_s(flops=1e9 + 1e6, dense_flops=1e9, bytes_moved=1e8 + 1e6, ops=5, dense_bytes=1e6)
    assert two == pytest.approx(0.01 + 0.01)
    single = d.block_time_s(flops=1e9 + 1e6, dense_flops=1e9, bytes_moved=1e8 + 1e6, ops=5)
    assert single == pytest.approx(max(0.01 + 1e-4, 0.0101))
    assert two >= single


def test_block_time_counts_overhead_per_op():
    d = make(op_overhead_s=1e-3)
    assert d.block_time_s(0, 0, 0, ops=7) == pytest.approx(7e-3)


@pytest.mark.parametrize(
    "field, value",
    [
        ("dense_flops_per_s", 0),
        ("dense_flops_per_s", -1e9),
        ("other_flops_per_s", 0.0),
        ("memory_bandwidth_bytes_per_s", -5.0),
        ("memory_bytes", 0),
        ("dense_flops_per_s", float("nan")),
    ],
)
def test_bad_rates_are_refused_with_the_field_named(field, value):
    with pytest.raises(ClusterError, match=rf"device 'dev': {field} must be positive and finite, got"):
        make(**{field: value})


def test_efficiency_above_one_is_refused():
    with pytest.raises(ClusterError, match="dense_efficiency is a fraction of peak, expected"):
        make(dense_efficiency=1.5)


def test_idle_above_busy_power_is_refused():
    with pytest.raises(ClusterError, match="idle_power_w=9 is above busy_power_w=5"):
        make(busy_power_w=5, idle_power_w=9)


def test_profile_round_trip(tmp_path):
    d = make(kind="host", busy_power_w=30.0, idle_power_w=5.0)
    path = d.save_profile(tmp_path / "host.json", measurements=[{"op": "matmul"}])
    doc = json.loads(path.read_text())
    assert doc["format"] == PROFILE_FORMAT and doc["measurements"] == [{"op": "matmul"}]
    assert Device.from_profile(path) == d
    assert Device.from_profile(doc) == d


def test_profile_with_missing_fields_names_them(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": PROFILE_FORMAT, "device": {"name": "h", "dense_flops_per_s": 1e9}}))
    with pytest.raises(ProfileError, match=r"missing \['other_flops_per_s', 'memory_bandwidth_bytes_per_s', 'op_overhead_s'\]"):
        Device.from_profile(path)


def test_profile_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ProfileError, match="is not JSON"):
        Device.from_profile(bad)
    with pytest.raises(ProfileError, match="cannot read device profile"):
        Device.from_profile(tmp_path / "absent.json")
    with pytest.raises(ProfileError, match="expected a JSON object with a 'device' object"):
        Device.from_profile({"format": PROFILE_FORMAT})
    with pytest.raises(ProfileError, match="format 'other/2', expected"):
        Device.from_profile({"format": "other/2", "device": {}})
    spec = make().to_json() | {"dense_flops_per_s": -1.0}
    with pytest.raises(ProfileError, match="dense_flops_per_s must be positive"):
        Device.from_profile({"device": spec})
    with pytest.raises(ProfileError, match="unknown fields"):
        Device.from_profile({"device": make().to_json() | {"warp": 9}})


def test_json_round_trip_and_replace():
    d = make()
    assert Device.from_json(d.to_json()) == d
    assert d.replace(memory_bytes=1.0).memory_bytes == 1.0
    with pytest.raises(ClusterError):
        d.replace(dense_flops_per_s=0)


def test_bandwidth_curve_is_a_cache_aware_roofline():
    d = make(bandwidth_curve=((1e6, 40e9), (1e8, 4e9)), op_overhead_s=0.0)
    assert d.bandwidth_at(1e5) == 40e9  # clamped below the first point
    assert d.bandwidth_at(1e9) == 4e9  # and above the last
    assert d.bandwidth_at(1e7) == pytest.approx(4e9 * 10**0.5)  # log-log midpoint
    assert d.node_time_s(0, 2e8, "other", output_bytes=1e8) == pytest.approx(2e8 / 4e9)
    assert d.node_time_s(0, 2e8, "other") == d.node_time_s(0, 2e8, "other", output_bytes=1e8)
    # blocks only know their total traffic: they use the single figure
    assert d.block_time_s(0, 0, 1e8, 0) == pytest.approx(1e8 / 10e9)
    assert Device.from_json(d.to_json()) == d
    with pytest.raises(ClusterError, match="bandwidth_curve holds"):
        make(bandwidth_curve=((1e6, 0.0),))


def test_dense_bandwidth_streams_dense_bytes_in_node_and_block_times():
    d = make(op_overhead_s=0.0, dense_bandwidth_bytes_per_s=2e9, bandwidth_curve=((1e6, 40e9), (1e8, 4e9)))
    # a depthwise-like dense node (2 FLOP per byte) is limited by the dense bandwidth, not the curve
    assert d.node_time_s(2e8, 1e8, "dense", output_bytes=1e6) == pytest.approx(1e8 / 2e9)
    # a matmul stays compute-bound
    assert d.node_time_s(1e10, 1e7, "dense") == pytest.approx(1e10 / 100e9)
    # other nodes keep the curve
    assert d.node_time_s(0, 2e6, "other", output_bytes=1e6) == pytest.approx(2e6 / 40e9)
    # blocks: dense bytes at the dense bandwidth, other bytes at the single figure
    assert d.block_time_s(0, 0, 3e8, 0, dense_bytes=1e8) == pytest.approx(1e8 / 2e9 + 2e8 / 10e9)
    assert d.sustained_dense_bandwidth_bytes_per_s == 2e9
    assert make().sustained_dense_bandwidth_bytes_per_s == make().sustained_bandwidth_bytes_per_s
    assert make(memory_efficiency=0.5, dense_bandwidth_bytes_per_s=2e9).sustained_dense_bandwidth_bytes_per_s == 1e9
    with pytest.raises(ClusterError, match="dense_bandwidth_bytes_per_s must be positive"):
        make(dense_bandwidth_bytes_per_s=0.0)


def test_fresh_pages_cost_outputs_above_the_threshold_in_node_times_only():
    d = make(op_overhead_s=0.0, page_fault_bytes_per_s=2e9, fresh_output_bytes=32e6)
    assert d.fresh_pages_s(16e6) == 0.0
    assert d.fresh_pages_s(64e6) == pytest.approx(64e6 / 2e9)
    assert d.node_time_s(0, 128e6, "other", output_bytes=64e6) == pytest.approx(128e6 / 10e9 + 64e6 / 2e9)
    assert d.node_time_s(0, 32e6, "other", output_bytes=16e6) == pytest.approx(32e6 / 10e9)
    # a compute-bound dense node pays its fresh pages on top of its compute
    assert d.node_time_s(1e10, 1e6, "dense", output_bytes=64e6) == pytest.approx(0.1 + 64e6 / 2e9)
    assert d.block_time_s(0, 0, 128e6, 0) == pytest.approx(128e6 / 10e9)
    # one of the two alone does nothing
    assert make(page_fault_bytes_per_s=2e9).fresh_pages_s(1e12) == 0.0
    with pytest.raises(ClusterError, match="page_fault_bytes_per_s must be positive"):
        make(page_fault_bytes_per_s=-1.0)


def test_calibrated_profiles_round_trip_and_old_profiles_still_load(tmp_path):
    d = make(
        bandwidth_curve=((5e5, 20e9), (4e7, 5e9)),
        dense_bandwidth_bytes_per_s=2e9,
        page_fault_bytes_per_s=2.2e9,
        fresh_output_bytes=33e6,
    )
    path = d.save_profile(tmp_path / "host.json")
    assert Device.from_profile(path) == d
    assert json.loads(path.read_text())["device"]["bandwidth_curve"] == [[5e5, 20e9], [4e7, 5e9]]
    # a profile written before these fields existed, with or without a curve
    old = {k: v for k, v in d.to_json().items() if k not in ("dense_bandwidth_bytes_per_s", "page_fault_bytes_per_s", "fresh_output_bytes")}
    loaded = Device.from_profile({"format": PROFILE_FORMAT, "device": old})
    assert loaded.dense_bandwidth_bytes_per_s is None and loaded.fresh_pages_s(1e12) == 0.0
    assert loaded.bandwidth_curve == d.bandwidth_curve
    bare = {k: v for k, v in old.items() if k != "bandwidth_curve"}
    assert Device.from_profile({"format": PROFILE_FORMAT, "device": bare}).bandwidth_curve == ()


def test_planner_tables_mirror_block_time_with_a_dense_bandwidth():
    np = pytest.importorskip("numpy")
    from dora_fx.planner.tables import _device_time_s

    d = make(dense_bandwidth_bytes_per_s=1e9, op_overhead_s=2e-6, misaligned_dense_efficiency=0.5)
    sums = {
        "flops": np.array([5e9, 1e8]),
        "dense": np.array([4e9, 5e7]),
        "misaligned": np.array([1e9, 0.0]),
        "bytes": np.array([3e8, 2e8]),
        "params": np.array([0.0, 0.0]),
        "ops": np.array([10.0, 3.0]),
        "dense_bytes": np.array([2e8, 1e8]),
    }
    got = _device_time_s(d, 1.0, sums)
    for i in range(2):
        want = d.block_time_s(
            sums["flops"][i], sums["dense"][i], sums["bytes"][i], sums["ops"][i],
            sums["dense_bytes"][i], sums["misaligned"][i],
        )
        assert got[i] == pytest.approx(want)


def test_misaligned_matmul_flops_run_at_their_efficiency():
    d = make(misaligned_dense_efficiency=0.5)
    aligned = d.node_time_s(1e9, 0, "dense")
    assert d.node_time_s(1e9, 0, "dense", misaligned_flops=1e9) - d.op_overhead_s == pytest.approx(
        2 * (aligned - d.op_overhead_s)
    )
    assert d.block_time_s(1e9, 1e9, 0, 0, misaligned_flops=5e8) == pytest.approx(1.5e9 / d.dense_flops_per_s)
    with pytest.raises(ClusterError, match="misaligned_dense_efficiency"):
        make(misaligned_dense_efficiency=1.5)


def test_an_odd_output_width_marks_a_matmul_misaligned():
    from dora_fx.cost_models.op_costs import is_misaligned_gemm

    assert is_misaligned_gemm("addmm", torch.empty(4, 50257))
    assert not is_misaligned_gemm("addmm", torch.empty(4, 1000))  # 4000 bytes: 125 vectors
    assert not is_misaligned_gemm("add", torch.empty(4, 50257))
