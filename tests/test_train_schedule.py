"""The training schedule IR: GPipe and 1F1B lowering, text/JSON round trip, deadlock freedom,
activations in flight."""

import pytest

from dora_fx.ir.schedule import ScheduleError
from dora_fx.ir.train_schedule import (
    TKind,
    TrainAction,
    TrainSchedule,
    Transfer,
    execute_training,
    in_flight,
    lower_training,
)

CHAIN3 = [Transfer(0, 1, 4), Transfer(1, 2, 9)]
SKIP = [Transfer(0, 1, 4), Transfer(0, 2, 5), Transfer(1, 2, 9), Transfer(0, 2, 1, grad=False)]


@pytest.mark.parametrize("policy", ["gpipe", "1f1b"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("transfers", [CHAIN3, SKIP])
def test_lowered_schedules_run_and_round_trip(policy, m, transfers):
    s = lower_training(3, transfers, m, policy)
    assert TrainSchedule.from_text(s.to_text()) == s
    assert TrainSchedule.from_json(s.to_json()) == s
    trace = execute_training(s)
    assert len(trace) == sum(len(a) for a in s.stages)
    for acts in s.stages:
        assert [a.mb for a in acts if a.kind is TKind.FORWARD] == list(range(m))
        assert sorted(a.mb for a in acts if a.kind is TKind.BACKWARD) == list(range(m))
        assert acts[-1].kind is TKind.REDUCE


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_in_flight_gpipe_holds_all_1f1b_at_most_stages_left(m):
    g = lower_training(4, [Transfer(k, k + 1, k) for k in range(3)], m, "gpipe")
    f = lower_training(4, [Transfer(k, k + 1, k) for k in range(3)], m, "1f1b")
    for k in range(4):
        assert in_flight(g, k) == m
        assert in_flight(f, k) == min(m, 4 - k)


def test_1f1b_text():
    s = lower_training(2, [Transfer(0, 1, 3)], 2, "1f1b")
    assert s.to_text().splitlines() == [
        "train schedule policy=1f1b microbatches=2",
        "stage 0: 0F 0SEND3>1 1F 1SEND3>1 0GRECV3<1 0B 1GRECV3<1 1B REDUCE",
        "stage 1: 0RECV3<0 0F 0B 0GSEND3>0 1RECV3<0 1F 1B 1GSEND3>0 REDUCE",
    ]


def test_gradient_not_sent_for_values_without_grad():
    s = lower_training(3, SKIP, 1, "gpipe")
    assert "0GSEND1>0" not in s.stage_text(2)
    assert "0GSEND5>0" in s.stage_text(2)


@pytest.mark.parametrize(
    "text", ["0F1", "F", "0SEND4", "0RECV4>1", "00F", "REDUCE0", "0X", "0GSEND4<1"]
)
def test_bad_tokens_are_refused(text):
    with pytest.raises(ScheduleError):
        TrainAction.parse(text)


def test_deadlock_is_named():
    bad = TrainSchedule(
        "gpipe",
        1,
        (
            (TrainAction(TKind.GRECV, 0, 3, 1), TrainAction(TKind.FORWARD, 0)),
            (TrainAction(TKind.RECV, 0, 3, 0), TrainAction(TKind.FORWARD, 0)),
        ),
    )
    with pytest.raises(ScheduleError, match="stage 0 at action 0 .0GRECV3<1."):
        execute_training(bad)


def test_bad_input():
    with pytest.raises(ScheduleError, match="flow down"):
        lower_training(2, [Transfer(1, 0, 3)], 2, "1f1b")
    with pytest.raises(ScheduleError, match="policy"):
        lower_training(2, [Transfer(0, 1, 3)], 2, "zb")
    with pytest.raises(ScheduleError, match="starts with"):
        TrainSchedule.from_text("schedule policy=overlap microbatches=1 contention=fair")
