"""Training through torch.compile(backend="dora"): AOTAutograd's backward cut at the forward's
stages gives eager's gradients for the zoo and the Hugging Face models; a new batch size, a
graph break, the fallbacks (a backward that cannot be cut, a forward dora cannot compile, the
recording path with aot=False), and the cut itself on a hand-made graph."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn

import dora_fx
from dora_fx import models
from dora_fx.dynamo.backward import assign_stages

GOLDEN = Path(__file__).parent / "golden"


def _options(**extra):
    return {
        "devices": dora_fx.scenarios.smart_home(), "qoe": dora_fx.QoE(batch=4), "num_stages": 2,
        "min_flops": 0, **extra,
    }  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _trainable(name, batch=4):
    model, example = models.build(name, batch=batch)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model, example


def _loss(output):
    leaves = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    return sum((t.float() ** 2).mean() for t in leaves)


def _steps(model, fast, reference, batches):
    """A backward and an SGD step per batch on both; each parameter's gradient compared.
    Returns the largest relative gradient error (max |ours - eager| / max |eager|)."""
    worst = 0.0
    for example in batches:
        _loss(fast(*example)).backward()
        _loss(reference(*example)).backward()
        for (key, ours), theirs in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5, msg=key)
            scale = theirs.grad.abs().max().clamp_min(1e-12)
            worst = max(worst, float((ours.grad - theirs.grad).abs().max() / scale))
        for (key, ours), theirs in zip(model.named_buffers(), reference.buffers(), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=key)  # batch norm
        for m in (model, reference):
            with torch.no_grad():
                for p in m.parameters():
                    p -= 0.01 * p.grad
            m.zero_grad()
    return worst


def _count_backward_stage_calls(backend):
    calls = {}
    for graph in backend.training_graphs:
        for stage in graph.split.stages:
            calls[stage.index] = 0
            stage.gm.register_forward_hook(lambda *_, k=stage.index: calls.__setitem__(k, calls[k] + 1))
    return calls


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_each_stage_runs_its_own_backward_and_gradients_equal_eager(name):
    """Two SGD steps: gradients of every parameter equal eager's; the backward ran as two
    stage graphs, each reading only the saved tensors its own stage holds."""
    model, example = _trainable(name)
    reference = copy.deepcopy(model)
    backend = dora_fx.backend(**_options())
    fast = torch.compile(model, backend=backend)
    _steps(model, fast, reference, [example])
    calls = _count_backward_stage_calls(backend)
    _steps(model, fast, reference, [example])
    assert calls == {0: 1, 1: 1}
    assert "backward: split over 2 stages (phone, laptop)" in backend.explain()
    (graph,) = backend.training_graphs
    assert all(not stage.reads_saved_of for stage in graph.split.stages)


def test_a_new_batch_size_recompiles_and_its_backward_is_cut_too():
    """The second batch size makes Dynamo's graph dynamic: sizes saved for the backward are
    evaluated from the sizes the forward takes."""
    model, example = _trainable("gpt2")
    reference = copy.deepcopy(model)
    backend = dora_fx.backend(**_options())
    fast = torch.compile(model, backend=backend)
    (tokens,) = example
    _steps(model, fast, reference, [example, (torch.cat([tokens, tokens[:2]]),)])
    assert [r.backward.startswith("backward: split over 2 stages") for r in backend.records] == [True, True]


class Breaks(nn.Module):
    """A data-dependent branch in the middle: Dynamo breaks the graph there."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(
            nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)
        )
        self.b = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))

    def forward(self, x):
        h = self.a(x)
        h = h * 2 if h.sum() > 0 else h - 1
        return self.b(h)


def test_explain_last_of_a_training_graph_golden():
    """Graph 0 (planned) runs its backward over both stages; graph 1, under min_flops, runs
    on one device and autograd backpropagates it."""
    torch.manual_seed(0)
    model, x = Breaks(), torch.randn(4, 32)
    reference = copy.deepcopy(model)
    backend = dora_fx.backend(**_options(min_flops=6e4))
    fast = torch.compile(model, backend=backend)
    _steps(model, fast, reference, [(x,), (-x,)])
    text = dora_fx.backend.explain_last() + "\n"
    golden = GOLDEN / "dynamo_explain_training.txt"
    if os.environ.get("DORA_ACCEPT_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"explain_last() differs from {golden}"


def test_a_backward_that_cannot_be_cut_runs_as_one_graph_with_a_warning(monkeypatch):
    from dora_fx.dynamo import training
    from dora_fx.dynamo.backward import BackwardSplitError

    def refuse(*args, **kwargs):
        raise BackwardSplitError("node mm_3 (stage 1) reads mm_2 of the earlier stage 0")

    monkeypatch.setattr(training, "assign_stages", refuse)
    model, example = _trainable("mlp")
    reference = copy.deepcopy(model)
    fast = torch.compile(model, backend="dora", options=_options())
    with pytest.warns(UserWarning, match="backward runs as one graph: node mm_3"):
        _steps(model, fast, reference, [example])
    text = dora_fx.backend.explain_last()
    assert "planned over 2 stage(s)" in text
    assert "backward: one graph, on one device (node mm_3 (stage 1) reads mm_2" in text


def test_a_forward_dora_cannot_compile_runs_as_traced_with_a_warning(monkeypatch):
    from dora_fx.dynamo.graphs import DoraBackend

    def refuse(*args, **kwargs):
        raise dora_fx.CaptureError("could not capture GraphModule: aten.weird_op has no formula")

    monkeypatch.setattr(DoraBackend, "compile_graph", refuse)
    model, example = _trainable("mlp")
    reference = copy.deepcopy(model)
    fast = torch.compile(model, backend="dora", options=_options())
    with pytest.warns(UserWarning, match="runs as AOTAutograd traced it, on one device: could not"):
        _steps(model, fast, reference, [example])
    text = dora_fx.backend.explain_last()
    assert "dora_fx could not compile its forward: could not capture" in text
    assert "backward: one graph, on one device (the forward was not planned)" in text


def test_aot_false_records_the_stages_under_autograd():
    """The recording path: the forward's stages (two microbatches) run under autograd, which
    backpropagates through them as one backward."""
    model, example = _trainable("transformer")
    reference = copy.deepcopy(model)
    backend = dora_fx.backend(**_options(aot=False, microbatches=2))
    fast = torch.compile(model, backend=backend)
    _steps(model, fast, reference, [example, example])
    assert not backend.training_graphs
    assert "planned over 2 stage(s)" in backend.explain()
    assert "backward:" not in backend.explain()


def _graph(code: str) -> torch.fx.Graph:
    """A backward-shaped graph: ``a`` saved by stage 0, ``b`` by stages 0 and 1, ``w`` a
    weight, ``tangents_1`` the output's gradient."""
    graph = torch.fx.Graph()
    env = {name: graph.placeholder(name) for name in ("a", "b", "w", "tangents_1")}
    for line in code.strip().splitlines():
        out, expr = (s.strip() for s in line.split("="))
        op, args = expr.rstrip(")").split("(")
        target = torch.ops.aten.mul.Tensor if op == "mul" else getattr(torch.ops.aten, op).default
        operands = tuple(env[a.strip()] for a in args.split(","))
        env[out] = graph.call_function(target, operands, name=out)
    graph.output((env["ga"], env["gw"]))
    return graph


def test_the_cut_without_autograd_numbers_follows_the_saved_tensors():
    """With no forward op to go by: a node runs on the latest stage no later than the values
    it reads and holding its saved tensors; a node of weights and tangents only, with its
    users; a weight's gradient, where the forward reads the weight."""
    graph = _graph("""
        wt = t(w)
        g1 = mul(tangents_1, b)
        g0 = mul(g1, a)
        ga = mm(g0, wt)
        gw = t(tangents_1)
    """)
    held_by = {"a": frozenset({0}), "b": frozenset({0, 1})}
    placed = assign_stages(graph, {}, held_by, [None, 1], num_stages=2)
    assert {n.name: s for n, s in placed.items()} == {"wt": 0, "g1": 1, "g0": 0, "ga": 0, "gw": 1}
