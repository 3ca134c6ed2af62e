"""Pure routing: canary split within binomial bounds, sticky users, monotone ramps, shadows."""

import math
import subprocess
import sys

import pytest

from gateway.routing import (
    Canary,
    RoutingState,
    Shadow,
    choose_variant,
    sample_shadows,
    sticky_fraction,
)

N = 20_000


def within_five_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("weight", [0.05, 0.25, 0.5, 0.9])
def test_canary_share_matches_weight(weight: float) -> None:
    """Without a sticky key, the canary gets a share within 5 sigma of its weight."""
    state = RoutingState("blue", Canary("green", weight))
    hits = sum(choose_variant("iris", state, None).role == "canary" for _ in range(N))
    assert within_five_sigma(hits, N, weight)


@pytest.mark.parametrize("weight", [0.05, 0.5])
def test_sticky_share_matches_weight(weight: float) -> None:
    """Sticky hashing of distinct users also splits them in proportion to the weight."""
    state = RoutingState("blue", Canary("green", weight))
    hits = sum(choose_variant("iris", state, f"user-{i}").role == "canary" for i in range(N))
    assert within_five_sigma(hits, N, weight)


def test_weight_zero_and_one_are_exact() -> None:
    """Weight 0 never picks the canary; weight 1 always does; no canary means live."""
    users = [f"u{i}" for i in range(2000)]
    assert {choose_variant("m", RoutingState("b", Canary("g", 0.0)), u).variant for u in users} == {
        "b"
    }
    assert {choose_variant("m", RoutingState("b", Canary("g", 1.0)), u).variant for u in users} == {
        "g"
    }
    assert choose_variant("m", RoutingState("b"), None).role == "live"


def test_ramping_never_moves_a_canary_user_back() -> None:
    """Raising the weight 0.05 -> 0.25 -> 1.0 only moves users from live to canary."""
    users = [f"user-{i}" for i in range(5000)]
    previous: set[str] = set()
    for weight in (0.05, 0.25, 0.5, 1.0):
        state = RoutingState("blue", Canary("green", weight))
        on_canary = {u for u in users if choose_variant("iris", state, u).variant == "green"}
        assert previous <= on_canary
        previous = on_canary
    assert previous == set(users)


def test_sticky_hash_is_stable_across_processes() -> None:
    """The sticky point of a user is the same in another interpreter (not Python's salted hash)."""
    here = [sticky_fraction("iris", f"user-{i}") for i in range(5)]
    code = "from gateway.routing import sticky_fraction; print([sticky_fraction('iris', f'user-{i}') for i in range(5)])"
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert repr(here) == there.stdout.strip()
    assert all(0.0 <= x < 1.0 for x in here)


def test_sticky_point_depends_on_the_model() -> None:
    """The same user lands at unrelated points for different models."""
    same = sum(
        (sticky_fraction("a", f"u{i}") < 0.5) == (sticky_fraction("b", f"u{i}") < 0.5)
        for i in range(2000)
    )
    assert within_five_sigma(same, 2000, 0.5)


def test_shadow_sampling_follows_sample() -> None:
    """Each shadow is chosen with its own sample probability."""
    state = RoutingState(
        "blue", shadows=(Shadow("all", 1.0), Shadow("some", 0.3), Shadow("none", 0.0))
    )
    counts = {"all": 0, "some": 0, "none": 0}
    for _ in range(N):
        for shadow in sample_shadows(state.shadows):
            counts[shadow.variant] += 1
    assert counts["all"] == N and counts["none"] == 0
    assert within_five_sigma(counts["some"], N, 0.3)


def test_state_round_trips_through_json_form() -> None:
    """The admin/history JSON form restores the same state."""
    state = RoutingState("blue", Canary("green", 0.25), "x-user-id", (Shadow("mlp", 0.5),), 7)
    assert RoutingState.from_dict(state.to_dict()) == state
    assert state.variants() == {"blue", "green", "mlp"}
