"""A data-parallel stage (several devices, batch shares) computes what the model computes."""

import pytest
import torch

import dora_fx
from dora_fx.ir.batch_split import split_sizes
from dora_fx.models import build

CLUSTER = dora_fx.Cluster(tuple(dora_fx.Device(n, 1e11) for n in ("a", "b", "c", "d")))


def test_split_sizes_follow_shares_and_sum_to_the_batch():
    assert split_sizes(8, (0.25, 0.75)) == [2, 6]
    assert split_sizes(5, (1 / 3, 1 / 3, 1 / 3)) == [2, 2, 1]
    assert split_sizes(1, (0.5, 0.5)) == [1, 0]


@pytest.mark.parametrize("name", ["gpt2", "mobilenetv2", "bert", "transformer"])
def test_data_parallel_middle_stage(name, tmp_path):
    model, inputs = build(name, batch=5)
    blocks = len(dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=1).state.chain.blocks)
    third = blocks // 3
    plan = (
        "plan hybrid batch=5\n"
        f"stage 0 blocks=0:{third} devices=a\n"
        f"stage 1 blocks={third}:{2 * third} devices=b,c shares=0.375,0.625\n"
        f"stage 2 blocks={2 * third}:{blocks} devices=d"
    )
    compiled = dora_fx.compile(model, CLUSTER, example_inputs=inputs, plan=plan)
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(compiled(*inputs), expected)
    torch.testing.assert_close(dora_fx.load(compiled.save(tmp_path / name))(*inputs), expected)


def test_data_parallel_first_and_last_stages():
    model, inputs = build("gpt2", batch=4)
    blocks = len(dora_fx.compile(model, CLUSTER, example_inputs=inputs, num_stages=1).state.chain.blocks)
    plan = (
        "plan hybrid batch=4\n"
        f"stage 0 blocks=0:10 devices=a,b shares=0.5,0.5\n"
        f"stage 1 blocks=10:{blocks} devices=c,d shares=0.25,0.75"
    )
    compiled = dora_fx.compile(model, CLUSTER, example_inputs=inputs, plan=plan)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs))


def test_a_given_plan_is_checked_against_the_cluster():
    model, inputs = build("mlp")
    with pytest.raises(dora_fx.PlanError, match=r"uses devices \['zz'\] that are not in cluster"):
        dora_fx.compile(model, CLUSTER, example_inputs=inputs, plan="plan p\nstage 0 blocks=0:9 devices=zz")
    with pytest.raises(dora_fx.PlanError, match="covers 3 blocks but this model has 9"):
        dora_fx.compile(model, CLUSTER, example_inputs=inputs, plan="plan p\nstage 0 blocks=0:3 devices=a")
