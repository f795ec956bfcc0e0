"""The peer harness (torch.distributed.pipelining, ScheduleGPipe) serves the model's outputs on
two local ranks, and picks evenly spaced split points as a hand-written user would."""

from __future__ import annotations

import pytest
import torch

import dora_fx
from dora_fx import models
from dora_fx.peers.pipelining import even_split_points, run_pipelining

from .conftest import close


def test_even_split_points_follow_the_longest_numbered_run():
    model, _ = models.build("mobilenetv2", batch=2)
    assert even_split_points(model, 4) == [
        "mobilenet_v2.layer.4", "mobilenet_v2.layer.8", "mobilenet_v2.layer.12",
    ]  # fmt: skip
    mlp, _ = models.build("mlp", batch=2)
    with pytest.raises(ValueError, match=r"at least 5 repeated layers, .* \(layers\) has 4"):
        even_split_points(mlp, 5)


def test_pipelining_peer_gives_the_model_outputs_on_two_ranks(host):
    model, _ = models.build("mlp", batch=4)
    generator = torch.Generator().manual_seed(0)
    requests = [(torch.randn(4, 64, generator=generator),) for _ in range(4)]
    cluster = dora_fx.scenarios.smart_home()
    result = run_pipelining(
        model, requests, ["phone", "laptop"], cluster=cluster, host=host, microbatches=2,
        time_scale=4.0, timeout_s=30,
    )  # fmt: skip
    assert [r["device"] for r in result.ranks] == ["phone", "laptop"]
    assert len(result.outputs) == len(requests)
    for request, output in zip(requests, result.outputs):
        assert close(output, model(*request))
    assert result.throughput_rps > 0 and result.ranks[0]["bytes_sent"] > 0
