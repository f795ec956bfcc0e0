"""The verifier (DORA_DEBUG=1) catches broken stage graphs."""

import pytest
import torch

import dora_fx
from dora_fx.compiler.passes.verify import verify_stages
from dora_fx.ir.comm_ops import RECV
from dora_fx.models import build

CLUSTER = dora_fx.Cluster(tuple(dora_fx.Device(n, 1e11) for n in "abc"))


def _compiled():
    model, inputs = build("mlp")
    return dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=3)


def _check(compiled):
    verify_stages(
        [p.gm.graph for p in compiled.state.programs],
        [p.node_names for p in compiled.state.programs],
        [n.name for n in compiled.state.chain.nodes],
    )


def test_a_sound_split_passes():
    _check(_compiled())


def test_unmatched_recv_is_caught():
    compiled = _compiled()
    recv = next(n for n in compiled.state.programs[1].gm.graph.nodes if n.target is RECV)
    recv.kwargs = {**recv.kwargs, "tag": 999}
    with pytest.raises(dora_fx.VerificationError, match=r"recvs without a send \[\(0, 1, 999\)\]"):
        _check(compiled)


def test_a_node_in_two_stages_is_caught():
    compiled = _compiled()
    compiled.state.programs[2].node_names.append(compiled.state.programs[0].node_names[0])
    with pytest.raises(dora_fx.VerificationError, match="in several stages"):
        _check(compiled)


def test_send_survives_dead_code_elimination():
    compiled = _compiled()
    graph = compiled.state.programs[0].gm.graph
    before = len(graph.nodes)
    graph.eliminate_dead_code()
    assert len(graph.nodes) == before


def test_debug_mode_dumps_every_pass(debug_verifier):
    _compiled()
    names = sorted(p.name for p in debug_verifier.iterdir())
    assert names == [
        "00_capture.txt", "01_annotate_costs.txt", "02_coarsen.txt",
        "03_partition.txt", "04_insert_comm.txt", "05_schedule_comm.txt", "06_codegen.txt",
    ]
    assert "torch.ops.dora.send" in (debug_verifier / "04_insert_comm.txt").read_text() or "dora.send" in (debug_verifier / "04_insert_comm.txt").read_text()


class _Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 4)

    def forward(self, x):
        return {"out": self.b(torch.relu(self.a(x)))}


def test_symbolic_trace_fallback(monkeypatch):
    import dora_fx.compiler.capture as capture

    def refuse(*args, **kwargs):
        raise RuntimeError("export refuses this model")

    monkeypatch.setattr(capture, "_export", refuse)
    model = _Plain().eval()
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="fell back to symbolic_trace"):
        compiled = dora_fx.compile(model, CLUSTER, example_inputs=(x,), num_stages=2)
    assert compiled.state.captured.method == "symbolic_trace"
    torch.testing.assert_close(compiled(x), model(x))
    assert "torch.export failed: RuntimeError: export refuses this model" in compiled.explain()
    # static shapes: costs are assumed linear in the batch
    assert compiled.state.chain.at(8)[0][-1].flops == 2 * compiled.state.chain.at(4)[0][-1].flops
