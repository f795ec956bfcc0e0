"""A rank that dies or hangs mid-stream ends the run with an error naming it, within the
timeout, and leaves no process behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from dora_fx.errors import DeviceLost, RankFailedError
from dora_fx.runtime.distributed.launch import run_local

TIMEOUT_S = 4.0


def _children() -> set[int]:
    """Live or zombie processes whose parent is this one (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # under load a peer's receive timeout can name the dead rank before its exit status is
        # read: both messages name it
        ("kill", r"rank 1 \(stage 1 on device 'laptop'\) died( \(killed by SIGKILL\)| or hung)"),
        ("hang", r"rank 1 \(stage 1 on device 'laptop'\) died or hung"),
    ],
)
def test_a_failed_rank_stops_the_run_with_its_name(mlp2_plan, kind, expected):
    _, _, folder = mlp2_plan
    requests = [(torch.randn(4, 64),) for _ in range(8)]
    before = _children()
    started = time.monotonic()
    with pytest.raises(RankFailedError, match=expected) as failure:
        run_local(
            folder, requests, emulate=False, timeout_s=TIMEOUT_S,
            fault={"rank": 1, "item": 3, "kind": kind},
        )
    # typed, for the runtime adapter: which rank, stage and device were lost
    assert isinstance(failure.value, DeviceLost)
    assert (failure.value.rank, failure.value.stage, failure.value.device) == (1, 1, "laptop")
    # startup (~10 s on 2 idle cores, several times that when shared) + the timeout + the
    # launcher's grace: a generous bound that still catches a hang
    assert time.monotonic() - started < 3 * TIMEOUT_S + 60
    assert _children() <= before


def test_answers_given_before_a_failure_survive_it_by_request_id(mlp2_plan):
    """Rank 0 hands each answer out as it collects it, so a rank killed mid-stream loses none
    of the answers already given: the error's ``answered`` holds them by request id."""
    from dora_fx.artifact.manifest import read_plan_folder

    model, _, folder = mlp2_plan
    m = read_plan_folder(folder).schedule.microbatches
    requests = {100 + k: (torch.randn(4, 64),) for k in range(8)}
    streamed: list[int] = []
    with pytest.raises(DeviceLost) as failure:
        run_local(
            folder, requests, emulate=False, timeout_s=TIMEOUT_S, in_flight=1,
            fault={"rank": 1, "item": 4 * m, "kind": "kill"},
            on_answer=lambda rid, _: streamed.append(rid),
        )  # fmt: skip
    answered = failure.value.answered
    # request 3's outputs may die with their sender (it is killed right after sending them)
    assert {100, 101, 102} <= set(answered) <= set(range(100, 104))
    assert streamed == sorted(streamed) and set(streamed) <= set(answered)
    with torch.no_grad():
        for rid, output in answered.items():
            torch.testing.assert_close(output, model(*requests[rid]))
