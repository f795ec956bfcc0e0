"""The generated code of a small model's stages, pinned. Regenerate after an intended change
with DORA_ACCEPT_GOLDEN=1 and read the diff."""

import os
from pathlib import Path

import pytest

import dora_fx
from dora_fx.models import build

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("num_stages", [2, 3])
def test_mlp_stage_code(num_stages):
    model, inputs = build("mlp")
    cluster = dora_fx.Cluster((dora_fx.Device("phone", 1e11), dora_fx.Device("laptop", 1e11), dora_fx.Device("pi", 1e11)))
    compiled = dora_fx.compile(model, cluster, example_inputs=inputs, num_stages=num_stages)
    for stage in compiled.stages:
        golden = GOLDEN / f"mlp_{num_stages}stages_stage{stage.index}.py"
        if os.environ.get("DORA_ACCEPT_GOLDEN"):
            golden.write_text(stage.code)
        assert stage.code == golden.read_text(), f"generated code differs from {golden}"


@pytest.mark.parametrize("name, num_stages", [("mlp", 2), ("transformer", 3)])
def test_schedule_text(name, num_stages):
    """The overlap schedule with two microbatches, pinned (its text round-trips)."""
    from dora_fx.compiler.pipeline import run_passes
    from dora_fx.compiler.state import CompileState
    from dora_fx.ir.schedule import Schedule

    model, inputs = build(name)
    cluster = dora_fx.Cluster(tuple(dora_fx.Device(n, 1e11) for n in ("phone", "laptop", "pi")))
    state = CompileState(model=model, example_inputs=inputs, example_kwargs={}, cluster=cluster,
                         qoe=dora_fx.QoE(), num_stages=num_stages, microbatches=2)
    run_passes(state)
    text = state.schedule.to_text() + "\n"
    assert Schedule.from_text(text) == state.schedule
    golden = GOLDEN / f"schedule_{name}_{num_stages}stages.txt"
    if os.environ.get("DORA_ACCEPT_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"schedule differs from {golden}"
