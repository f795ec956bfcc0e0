"""Split outputs equal the model's, for the built-in zoo and Hugging Face architectures (random
weights from configs), at 2, 3 and 4 stages, through compiled(...) and dora_fx.load(...)."""

import pytest
import torch

import dora_fx
from dora_fx.models import HF_MODELS, build

CLUSTER = dora_fx.Cluster(tuple(dora_fx.Device(f"dev{i}", (i + 1) * 1e11) for i in range(4)))
BUILTIN = ["mlp", "cnn", "transformer"]


def _other_batch(inputs, batch):
    return tuple(
        torch.cat([x] * (batch // x.shape[0] + 1))[:batch] if isinstance(x, torch.Tensor) else x
        for x in inputs
    )


@pytest.mark.parametrize("name", BUILTIN + sorted(HF_MODELS))
def test_stages_compute_what_the_model_computes(name, tmp_path, debug_verifier):
    model, inputs = build(name, "small", batch=2)
    other = _other_batch(inputs, 3)  # the batch stays symbolic
    with torch.no_grad():
        expected, expected_other = model(*inputs), model(*other)
    for num_stages in (2, 3, 4):
        compiled = dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=num_stages)
        assert len(compiled.stages) == num_stages
        torch.testing.assert_close(compiled(*inputs), expected)
        torch.testing.assert_close(compiled(*other), expected_other)
        folder = compiled.save(tmp_path / f"{name}_{num_stages}")
        loaded = dora_fx.load(folder)
        torch.testing.assert_close(loaded(*inputs), expected)
        torch.testing.assert_close(loaded(*other), expected_other)
    assert sorted(p.name for p in debug_verifier.iterdir())[-1] == "06_codegen.txt"


def test_output_pytree_is_preserved():
    model, inputs = build("transformer")
    out = dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=3)(*inputs)
    assert isinstance(out, dict) and sorted(out) == ["logits", "pooled"]


def test_keyword_inputs(tmp_path):
    model, (tokens,) = build("bert")
    mask = torch.ones_like(tokens)
    mask[:, -3:] = 0
    compiled = dora_fx.compile(
        model, CLUSTER, example_inputs=(tokens,), example_kwargs={"attention_mask": mask}, num_stages=3
    )
    with torch.no_grad():
        expected = model(tokens, attention_mask=mask)
    torch.testing.assert_close(compiled(tokens, attention_mask=mask), expected)
    loaded = dora_fx.load(compiled.save(tmp_path / "bert"))
    torch.testing.assert_close(loaded(tokens, attention_mask=mask), expected)


def test_weights_live_only_where_used():
    model, inputs = build("mlp")
    compiled = dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=4)
    owners: dict[str, list[int]] = {}
    for stage in compiled.stages:
        for name in stage.module.state_dict():
            owners.setdefault(name, []).append(stage.index)
    assert all(len(stages) == 1 for stages in owners.values())
    assert len(owners) == len(model.state_dict())


def test_tied_weights_survive_save_and_load(tmp_path):
    model, inputs = build("gpt2")  # lm_head.weight is wte.weight
    compiled = dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=2)
    loaded = dora_fx.load(compiled.save(tmp_path / "gpt2"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs))


def test_sequence_dim_stays_symbolic_when_named():
    model, (tokens,) = build("gpt2")
    compiled = dora_fx.compile(model, CLUSTER, example_inputs=(tokens,), seq_dim=1, num_stages=3)
    assert sorted(compiled.state.captured.symbols.values()) == ["batch", "seq"]
    shorter = tokens[:, :9]
    with torch.no_grad():
        torch.testing.assert_close(compiled(shorter), model(shorter))
    head = compiled.state.chain.blocks[-1].flops
    assert {s.name for s in head.free_symbols} == {"batch", "seq"}


def test_a_model_that_fixes_its_sequence_falls_back_to_batch_only():
    model, (tokens,) = build("bert")
    with pytest.warns(UserWarning, match="specializes its batch/seq size"):
        compiled = dora_fx.compile(model, CLUSTER, example_inputs=(tokens,), seq_dim=1)
    assert list(compiled.state.captured.symbols.values()) == ["batch"]
