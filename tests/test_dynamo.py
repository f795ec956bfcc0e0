"""torch.compile(model, backend="dora"): outputs equal eager for the zoo and the Hugging Face
models, graph breaks, new batch sizes, bad options, graphs dora cannot compile, the distributed
runtime (training: ``test_dynamo_training.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

import dora_fx
from dora_fx import models

GOLDEN = Path(__file__).parent / "golden"


def _options(**extra):
    return {"devices": dora_fx.scenarios.smart_home(), "qoe": dora_fx.QoE(batch=4), **extra}


def _assert_equal(got, want):
    for a, b in zip(pytree.tree_leaves(got), pytree.tree_leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_outputs_equal_eager_across_two_stages_and_a_new_batch_size(name):
    model, example = models.build(name, batch=4)
    fast = torch.compile(model, backend="dora", options=_options(num_stages=2, min_flops=0))
    bigger = tuple(torch.cat([x, x[:2]]) for x in example)  # batch 6: Dynamo recompiles
    with torch.no_grad():
        _assert_equal(fast(*example), model(*example))
        _assert_equal(fast(*bigger), model(*bigger))
    records = dora_fx.backend.explain_last()
    assert "planned over 2 stage(s)" in records


class Breaks(nn.Module):
    """A data-dependent branch in the middle: Dynamo breaks the graph there."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64))
        self.b = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))

    def forward(self, x):
        h = self.a(x)
        h = h * 2 if h.sum() > 0 else h - 1
        return self.b(h)


def test_a_graph_break_gives_two_graphs_each_planned_or_run_locally_golden():
    torch.manual_seed(0)
    model, x = Breaks().eval(), torch.randn(4, 32)
    backend = dora_fx.backend(dora_fx.scenarios.smart_home(), dora_fx.QoE(batch=4),
                              num_stages=2, min_flops=4e4)  # fmt: skip
    fast = torch.compile(model, backend=backend)
    with torch.no_grad():
        _assert_equal(fast(x), model(x))
        _assert_equal(fast(-x), model(-x))
    text = dora_fx.backend.explain_last() + "\n"
    assert text == backend.explain() + "\n"
    golden = GOLDEN / "dynamo_explain_graph_break.txt"
    if os.environ.get("DORA_ACCEPT_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"explain_last() differs from {golden}"


def test_a_graph_dora_cannot_compile_runs_eagerly_with_a_warning(monkeypatch):
    from dora_fx.dynamo import graphs as module

    def refuse(*args, **kwargs):
        raise dora_fx.CaptureError("could not capture GraphModule: aten.weird_op has no formula")

    monkeypatch.setattr(module, "compile", refuse)
    model, (x,) = models.build("mlp", batch=4)
    fast = torch.compile(model, backend="dora", options=_options(min_flops=0))
    with torch.no_grad(), pytest.warns(UserWarning, match="runs eagerly: could not capture .*aten.weird_op"):
        _assert_equal(fast(x), model(x))
    assert "dora_fx could not compile it" in dora_fx.backend.explain_last()


def test_small_graphs_run_on_one_device_and_say_the_threshold():
    model, (x,) = models.build("mlp", batch=4)
    fast = torch.compile(model, backend="dora", options=_options())
    with torch.no_grad():
        _assert_equal(fast(x), model(x))
    assert "136 kFLOP < min_flops 1e+07" in dora_fx.backend.explain_last()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (None, r"the 'dora' backend needs options"),
        ({"qoe": dora_fx.QoE()}, r"option 'devices' is missing"),
        ({"devices": "smart_home"}, r"option 'devices' must be a dora_fx.Cluster .* got str"),
        ({**_options(), "runtime": "gpu"}, r"option 'runtime' must be 'inprocess'.* got 'gpu'"),
        ({**_options(), "stages": 2}, r"unknown option\(s\) \['stages'\] for backend 'dora'"),
        ({**_options(), "min_flops": -1}, r"option 'min_flops' must be a non-negative number"),
        ({**_options(), "aot": "yes"}, r"option 'aot' must be True \(default\).* got 'yes'"),
    ],
)
def test_bad_options_name_the_option_and_what_it_expects(options, match):
    model, (x,) = models.build("mlp", batch=4)
    kwargs = {} if options is None else {"options": options}
    fast = torch.compile(model, backend="dora", **kwargs)
    with pytest.raises(Exception, match=match):
        fast(x)
    if options is not None:
        with pytest.raises(dora_fx.BackendOptionError, match=match):
            dora_fx.backend(**options)


def test_the_backend_name_resolves_without_importing_dora_fx():
    code = (
        "import sys, torch\n"
        "from torch._dynamo.backends.registry import lookup_backend\n"
        "fn = lookup_backend('dora')\n"
        "print(fn.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "dora_fx.dynamo"


def test_the_distributed_runtime_serves_the_calls():
    model, (x,) = models.build("mlp", batch=4)
    options = _options(num_stages=2, min_flops=0, runtime="distributed")
    fast = torch.compile(model, backend="dora", options=options)
    with torch.no_grad():
        _assert_equal(fast(x), model(x))
        _assert_equal(fast(x + 1), model(x + 1))
