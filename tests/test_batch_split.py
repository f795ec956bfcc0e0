"""The one batch split (largest remainder) every runtime uses: its properties."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dora_fx.ir.batch_split import row_bounds, split_sizes

shares_lists = st.lists(st.floats(0.01, 1.0, allow_nan=False), min_size=1, max_size=6)
batches = st.integers(0, 64)


@settings(derandomize=True, max_examples=300)
@given(batches, shares_lists)
def test_sizes_sum_to_the_batch_and_stay_within_a_row_of_the_exact_share(batch, shares):
    sizes = split_sizes(batch, shares)
    assert sum(sizes) == batch and all(s >= 0 for s in sizes)
    for size, share in zip(sizes, shares):
        assert abs(size - batch * share / sum(shares)) < 1


@settings(derandomize=True, max_examples=200)
@given(batches, shares_lists, st.floats(0.1, 10.0))
def test_scaling_the_shares_changes_nothing(batch, shares, factor):
    scaled = [s * factor for s in shares]
    exact = [batch * s / sum(shares) for s in shares]
    # scaling can move a remainder by a rounding error; only compare away from ties
    remainders = sorted(x - math.floor(x) for x in exact)
    if all(abs(a - b) > 1e-6 for a, b in zip(remainders, remainders[1:])):
        assert split_sizes(batch, scaled) == split_sizes(batch, shares)


@settings(derandomize=True, max_examples=200)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_shares_that_are_whole_rows_split_exactly(rows):
    """The planner's shares are whole rows of the plan's batch: the split reproduces them."""
    batch = sum(rows)
    assert split_sizes(batch, [r / batch for r in rows]) == rows


@settings(derandomize=True, max_examples=200)
@given(batches, st.integers(1, 6))
def test_equal_shares_differ_by_at_most_one_row_earlier_members_first(batch, members):
    sizes = split_sizes(batch, [1.0] * members)
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@settings(derandomize=True, max_examples=200)
@given(batches, shares_lists)
def test_row_bounds_are_contiguous_in_member_order(batch, shares):
    bounds = row_bounds(batch, shares)
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert [stop - start for start, stop in bounds] == split_sizes(batch, shares)


def test_a_member_may_get_no_rows():
    assert split_sizes(2, [0.9, 0.1]) == [2, 0]
    assert split_sizes(3, [0.1, 0.1, 0.8]) == [0, 0, 3]
    assert split_sizes(5, [1 / 3] * 3) == [2, 2, 1]
