"""Streaming sessions: the ranks stay up across submissions, answers equal the model's, and
a killed rank ends the session with the answers it gave before."""

from __future__ import annotations

import time

import pytest
import torch

from dora_fx.errors import DeviceLost, RankFailedError
from dora_fx.runtime.distributed.inbox import HEARTBEAT_S
from dora_fx.runtime.distributed.session import Session

TIMEOUT_S = 4.0


def test_a_session_serves_submissions_until_closed(mlp2_plan, host):
    model, _, folder = mlp2_plan
    inputs = {rid: (torch.randn(4, 64),) for rid in (7, 3, 11, 5)}
    with torch.no_grad():
        eager = {rid: model(*x) for rid, x in inputs.items()}
    seen: list[int] = []
    with Session(folder, inputs[7], emulate=True, host=host, timeout_s=TIMEOUT_S) as session:
        session.submit([(7, inputs[7]), (3, inputs[3])])
        first = session.wait([7, 3], on_answer=lambda rid, _: seen.append(rid))
        time.sleep(1.5 * HEARTBEAT_S)  # idle: rank 0 keeps the other ranks in step
        session.submit([(11, inputs[11]), (5, inputs[5])])
        second = session.wait([11, 5])
    answers = {**first, **second}
    assert sorted(seen) == [3, 7]
    for rid, expected in eager.items():
        torch.testing.assert_close(answers[rid], expected, atol=1e-5, rtol=1e-4)
    assert session.error is None


def test_a_killed_rank_ends_the_session_keeping_earlier_answers(mlp2_plan):
    _, _, folder = mlp2_plan
    requests = [(rid, (torch.randn(4, 64),)) for rid in range(8)]
    session = Session(
        folder, requests[0][1], emulate=False, timeout_s=TIMEOUT_S,
        fault={"rank": 1, "item": 5, "kind": "kill"},
    )  # fmt: skip
    try:
        session.submit(requests[:3])
        assert sorted(session.wait([0, 1, 2])) == [0, 1, 2]
        session.submit(requests[3:])
        with pytest.raises(RankFailedError, match="rank 1") as failure:
            session.wait([rid for rid, _ in requests[3:]], timeout_s=120)
        answered = failure.value.answered
        assert isinstance(failure.value, DeviceLost) and failure.value.device == "laptop"
        assert set(answered) <= {3, 4} and all(rid in {3, 4} for rid in answered)
    finally:
        session.close()
