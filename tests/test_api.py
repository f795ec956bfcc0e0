"""The CompiledModel's doors to the simulator and the distributed runtime."""

import torch

import dora_fx
from dora_fx.models import build


def _compiled():
    model, inputs = build("mlp")
    cluster = dora_fx.scenarios.edge_cluster(4)
    return model, inputs, dora_fx.compile(model, cluster, dora_fx.QoE(batch=2), example_inputs=inputs, num_stages=2)


def test_simulate_the_chosen_plan():
    _, _, compiled = _compiled()
    result = compiled.simulate(requests=20)
    assert result.latency_p50_s > 0 and result.throughput_rps > 0


def test_run_distributed_gives_the_model_outputs():
    model, inputs, compiled = _compiled()
    result = compiled.run_distributed([inputs] * 4, emulate=False, timeout_s=30.0, warmup=1)
    with torch.no_grad():
        expected = model(*inputs)
    assert len(result.outputs) == 4
    for output in result.outputs:
        torch.testing.assert_close(output, expected)


def test_explain_shows_the_plan_set_and_predictions():
    model, inputs = build("mlp")
    compiled = dora_fx.compile(model, dora_fx.scenarios.edge_cluster(4), dora_fx.QoE(batch=2), example_inputs=inputs)
    text = compiled.explain()
    assert "plan set:" in text and "certified lower bound" in text and "chosen:" in text
    assert "predicted (" in text


def test_explain_shows_the_adapter_mixture_under_load():
    model, inputs = build("mlp")
    qoe = dora_fx.QoE(batch=2, request_rate_rps=50.0, objective="energy")
    compiled = dora_fx.compile(model, dora_fx.scenarios.edge_cluster(4), qoe, example_inputs=inputs)
    assert "runtime adapter (the mixture of plans serving the offered load)" in compiled.explain()
    composition = compiled.adapter().composition
    assert composition.feasible
    assert abs(composition.served_rps - 50.0) < 1e-6


def test_an_nn_sequential_saves_and_loads(tmp_path):
    """nn.Sequential names its weights '0.weight', '2.weight': the stage source must spell
    them as identifiers (the saved stage_0.py was a SyntaxError)."""
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
    ).eval()
    x = torch.randn(4, 16)
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.smart_home(), num_stages=2, example_inputs=(x,)
    )
    loaded = dora_fx.load(compiled.save(tmp_path / "plan"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_stages_run_in_the_callers_grad_mode_and_the_pipelines_train_mode(tmp_path):
    model, inputs, compiled = _compiled()
    with torch.no_grad():
        assert not compiled(*inputs).requires_grad
    assert compiled(*inputs).requires_grad  # nothing forces no_grad: autograd records
    assert compiled.training is False and not any(s.module.training for s in compiled.stages)
    compiled.train()
    assert all(s.module.training for s in compiled.stages)
    compiled.eval()
    loaded = dora_fx.load(compiled.save(tmp_path / "plan"))  # the mode it was compiled in
    assert loaded.training is False and not any(s.module.training for s in loaded.stages)
