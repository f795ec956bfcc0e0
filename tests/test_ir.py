import pytest
from hypothesis import given
from hypothesis import strategies as st

from dora_fx import Plan, PlanError, Stage


def test_plan_text_and_json_round_trip_exactly():
    plan = Plan(
        "hybrid",
        (
            Stage(0, 0, 3, ("phone",), predicted={"compute_s": 0.1}),
            Stage(1, 3, 9, ("laptop", "jetson"), (0.375, 0.625)),
        ),
        batch=8,
        predicted={"latency_s": 1 / 3},
        gap=0.0125,
    )
    assert Plan.from_text(plan.to_text()) == plan
    assert Plan.loads(plan.dumps()) == plan
    assert plan.to_text().splitlines()[2] == (
        "stage 1 blocks=3:9 devices=laptop,jetson shares=0.375,0.625"
    )


@st.composite
def plans(draw):
    num_stages = draw(st.integers(1, 5))
    cuts = sorted(draw(st.sets(st.integers(1, 40), min_size=num_stages - 1, max_size=num_stages - 1)))
    bounds = [0, *cuts, draw(st.integers(max(cuts, default=0) + 1, 60))]
    stages = []
    for k in range(num_stages):
        n = draw(st.integers(1, 3))
        weights = draw(st.lists(st.floats(0.1, 10), min_size=n, max_size=n))
        shares = tuple(w / sum(weights) for w in weights)
        shares = shares[:-1] + (1.0 - sum(shares[:-1]),)
        predicted = draw(st.dictionaries(st.sampled_from(["compute_s", "comm_s"]), st.floats(0, 1e3)))
        stages.append(Stage(k, bounds[k], bounds[k + 1], tuple(f"d{k}_{i}" for i in range(n)), shares if n > 1 else (), predicted))
    gap = draw(st.none() | st.floats(0, 1))
    return Plan(draw(st.sampled_from(["p", "balanced-flops", "x_1"])), tuple(stages), draw(st.integers(1, 64)), gap=gap)


@given(plans())
def test_any_plan_round_trips(plan):
    assert Plan.from_text(plan.to_text()) == plan
    assert Plan.loads(plan.dumps()) == plan


def test_stages_must_be_contiguous():
    with pytest.raises(PlanError, match="stage 1 starts at block 4 but stage 0 ends at 3"):
        Plan("p", (Stage(0, 0, 3, ("a",)), Stage(1, 4, 6, ("b",))))


def test_shares_must_sum_to_one():
    with pytest.raises(PlanError, match="shares must be positive and sum to 1"):
        Stage(0, 0, 3, ("a", "b"), (0.5, 0.6))


def test_bad_text_names_the_line():
    with pytest.raises(PlanError, match="expected key=value"):
        Plan.from_text("plan p batch=1\nstage 0 blocks=0:1 devices=a oops")
