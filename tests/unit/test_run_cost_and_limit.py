"""What a variant's queue learns to admit or refuse: RunCost and ConcurrencyLimit."""

import math

import pytest

from gateway.runtime.admission import ConcurrencyLimit, RunCost


def test_run_cost_separates_the_fixed_part_from_the_part_per_row() -> None:
    """Runs of 1 to 64 rows costing 1 ms + 80 µs a row: both parts are found, so 64 rows ahead
    are priced as one full batch (6.1 ms), not as 64 lone rows (69 ms)."""
    cost = RunCost(per_row=0.001)
    for rows in [1, 64, 8, 32, 2, 16, 48, 4] * 10:
        cost.learn(rows, 0.001 + 0.00008 * rows)
    assert cost.fixed == pytest.approx(0.001, rel=1e-6)
    assert cost.per_row == pytest.approx(0.00008, rel=1e-6)
    assert cost.seconds(1, 64) == pytest.approx(0.00612, rel=1e-6)


def test_run_cost_of_one_size_is_all_per_row() -> None:
    """Runs that are all of one size cannot tell the parts apart: all of it counts per row."""
    cost = RunCost(per_row=0.5)
    for _ in range(50):
        cost.learn(1, 0.002)
    assert cost.fixed == 0.0
    assert cost.per_row == pytest.approx(0.002, rel=0.01)


def test_concurrency_limit_is_none_until_an_answer_is_late() -> None:
    """No limit while answers come in time; the first late one (past half its time to its
    deadline) limits to a fifth less than were outstanding."""
    limit = ConcurrencyLimit()
    limit.answered(arrived=0.0, deadline=1.0, now=0.4, outstanding=500)
    assert limit.limit == math.inf
    limit.answered(arrived=1.0, deadline=2.0, now=1.6, outstanding=50)
    assert limit.limit == pytest.approx(40.8)  # (50 + 1) x 0.8


def test_concurrency_limit_cuts_once_per_cut_and_grows_back_slowly() -> None:
    """Late answers to requests admitted before the last cut do not cut again; later ones do;
    answers in time while it is half used raise it by one per `limit` answers."""
    limit = ConcurrencyLimit()
    limit.answered(arrived=1.0, deadline=2.0, now=1.6, outstanding=99)
    assert limit.limit == pytest.approx(80)
    limit.answered(arrived=1.1, deadline=2.0, now=1.7, outstanding=99)  # admitted before the cut
    assert limit.limit == pytest.approx(80)
    limit.answered(arrived=1.65, deadline=2.0, now=2.0, outstanding=99)  # after it
    assert limit.limit == pytest.approx(64)
    for _ in range(64):
        limit.answered(arrived=3.0, deadline=4.0, now=3.1, outstanding=40)
    assert limit.limit == pytest.approx(65, abs=0.05)
    limit.answered(arrived=3.0, deadline=4.0, now=3.1, outstanding=10)  # a tenth used: no rise
    assert limit.limit == pytest.approx(65, abs=0.05)
