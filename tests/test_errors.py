"""Bad input gets a clear error that says what was wrong and what to do."""

import pytest
import torch

import dora_fx
from dora_fx.models import build

CLUSTER = dora_fx.Cluster((dora_fx.Device("a", 1e11), dora_fx.Device("b", 1e11)))


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value
            return x * 2
        return x - 1


def test_uncapturable_model_names_both_attempts_and_a_fix():
    with pytest.raises(dora_fx.CaptureError) as info:
        dora_fx.compile(DataDependent().eval(), CLUSTER, example_inputs=(torch.randn(2, 3),))
    message = str(info.value)
    assert "could not capture DataDependent" in message
    assert "torch.export:" in message and "torch.fx.symbolic_trace:" in message
    assert "control flow" in message and "torch.cond" in message


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (torch.randn(2, 64), r"got a single Tensor; write example_inputs=\(x,\)"),
        ({"x": torch.randn(2, 64)}, "must be a tuple of the model's positional inputs, got dict"),
        (("text",), "hold no tensor"),
        ((torch.randn(2, 64), object()), "tensors and plain Python scalars only, got object"),
    ],
)
def test_example_inputs_of_the_wrong_type(inputs, match):
    model, _ = build("mlp")
    with pytest.raises(dora_fx.InputError, match=match):
        dora_fx.compile(model, CLUSTER, example_inputs=inputs)


def test_not_a_module():
    with pytest.raises(dora_fx.InputError, match="captures a torch.nn.Module, got function"):
        dora_fx.compile(lambda x: x, CLUSTER, example_inputs=(torch.randn(2, 3),))


def test_empty_cluster():
    model, inputs = build("mlp")
    with pytest.raises(dora_fx.ClusterError, match="the cluster has no devices"):
        dora_fx.compile(model, [], example_inputs=inputs)
    with pytest.raises(dora_fx.ClusterError, match="must be a dora_fx.Cluster or a list"):
        dora_fx.compile(model, 3, example_inputs=inputs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"latency_ms": -5}, r"latency_ms must be positive and finite, got -5"),
        ({"throughput_rps": 0}, r"throughput_rps must be positive"),
        ({"energy_j": float("nan")}, r"energy_j must be positive and finite"),
        ({"objective": "speed"}, r"objective must be one of"),
        ({"batch": 0}, r"batch must be a positive int"),
        ({"throughput_rps": 20, "request_rate_rps": 10}, r"throughput cannot exceed the offered load"),
        ({"source": 3}, r"QoE.source must be a device name \(a str\), got 3"),
    ],
)
def test_bad_qoe(kwargs, match):
    with pytest.raises(dora_fx.QoEError, match=match):
        dora_fx.QoE(**kwargs)


@pytest.mark.parametrize("role", ["source", "sink"])
def test_a_source_or_sink_not_in_the_cluster(role):
    model, inputs = build("mlp")
    qoe = dora_fx.QoE(**{role: "toaster"})
    with pytest.raises(dora_fx.PlanError, match=rf"{role} device 'toaster' is not in cluster .*\['a', 'b'\]"):
        dora_fx.compile(model, CLUSTER, qoe, example_inputs=inputs)


def test_more_stages_than_devices():
    model, inputs = build("mlp")
    with pytest.raises(dora_fx.PlanError, match=r"asked for 3 stages but the cluster has 2 devices \(a, b\)"):
        dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=3)


def test_wrong_inputs_at_call_time():
    model, inputs = build("mlp")
    compiled = dora_fx.compile(model, CLUSTER, example_inputs=inputs)
    with pytest.raises(dora_fx.InputError, match="expected 1 positional input"):
        compiled(inputs[0], inputs[0])
    with pytest.raises(dora_fx.InputError, match=r"expected a 2-d torch.float32 tensor, got a 2-d torch.int64"):
        compiled(torch.ones(2, 64, dtype=torch.long))
    with pytest.raises(dora_fx.InputError, match=r"input 0: dimension 1 has size 32, but the plan was "
                       r"compiled for shape \[batch, 64\] \(named dimensions may vary"):
        compiled(torch.ones(2, 32))
    compiled(torch.ones(5, 64))  # the batch may vary


def test_wrong_input_sizes_are_refused_before_any_rank_starts(saved):
    """A saved plan checks fixed sizes in-process and before launching ranks (a rank would
    fail mid-run, in a reshape far from the cause)."""
    from dora_fx.runtime.distributed.launch import run_local

    folder, inputs = saved
    with pytest.raises(dora_fx.InputError, match="dimension 1 has size 32"):
        dora_fx.load(folder)(torch.ones(2, 32))
    with pytest.raises(dora_fx.InputError, match="request 1: input 0: dimension 1 has size 32"):
        run_local(folder, [inputs, (torch.ones(2, 32),)])


@pytest.fixture
def saved(tmp_path):
    model, inputs = build("mlp")
    compiled = dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=2)
    return compiled.save(tmp_path / "plan"), inputs


def test_missing_file(saved):
    folder, _ = saved
    (folder / "stage_1.safetensors").unlink()
    with pytest.raises(dora_fx.PlanFolderError, match="stage_1.safetensors is missing"):
        dora_fx.load(folder)


def test_tampered_file(saved):
    folder, _ = saved
    source = folder / "stage_0.py"
    source.write_text(source.read_text().replace("relu", "sigmoid"))
    with pytest.raises(dora_fx.PlanFolderError, match="stage_0.py was modified after it was saved"):
        dora_fx.load(folder)


def test_not_a_plan_folder(tmp_path):
    with pytest.raises(dora_fx.PlanFolderError, match="plan.json is missing"):
        dora_fx.load(tmp_path)


def test_a_failing_pass_is_named(monkeypatch):
    import dora_fx.compiler.pipeline as pipeline

    def broken(state):
        raise ValueError("boom")

    passes = [(name, broken if name == "coarsen" else run) for name, run in pipeline.PASSES]
    monkeypatch.setattr(pipeline, "PASSES", passes)
    monkeypatch.setattr(pipeline.run_passes, "__defaults__", (passes,))
    model, inputs = build("mlp")
    with pytest.raises(dora_fx.PassError, match=r"pass 'coarsen' failed \(ValueError: boom\); passes run before it: capture, annotate_costs"):
        dora_fx.compile(model, CLUSTER, example_inputs=inputs)
