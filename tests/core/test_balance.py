"""Rules every compiled balancer (each name in ALGORITHMS) keeps via the Python wrappers: weights, up/down, avoid."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmesh._core.balance.base import Balancer
from fastmesh._core.balance.factory import ALGORITHMS, make_balancer

NAMES = sorted(ALGORITHMS)
# Randomised algorithms get a fixed seed so a failure replays; the tolerances hold for any seed.
SEED = 20240601


def counts(b, picks, avoid=-1):
    seen = [0] * b.size
    for _ in range(picks):
        seen[b.pick_endpoint(avoid)] += 1
    return seen


# ---- construction ----

@pytest.mark.parametrize("name", NAMES)
def test_factory_builds_all_up(name):
    b = make_balancer(name, [1, 2, 3])
    assert isinstance(b, Balancer)
    assert type(b) is ALGORITHMS[name]
    assert (b.size, b.up_count) == (3, 3)
    assert b.active_counts() == [0, 0, 0]


def test_factory_rejects_unknown_name():
    with pytest.raises(ValueError, match="least_conn"):
        make_balancer("least_conn", [1])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("weights, error", [
    ([1, 0], ValueError), ([-3], ValueError), ([2**31], ValueError),
    ([1, 1.5], TypeError), ([True], TypeError), ([1, "2"], TypeError),
])
def test_bad_weights_rejected(name, weights, error):
    with pytest.raises(error):
        make_balancer(name, weights)


@pytest.mark.parametrize("name", NAMES)
def test_no_endpoints_picks_nothing(name):
    b = make_balancer(name, [])
    assert (b.size, b.up_count) == (0, 0)
    assert b.pick_endpoint() == -1
    assert b.pick_endpoint(0) == -1


@pytest.mark.parametrize("name", NAMES)
def test_python_wrappers_check_indexes(name):
    b = make_balancer(name, [1, 1])
    for call in (b.mark_up, b.mark_down, b.start, b.end):
        with pytest.raises(IndexError):
            call(2)
        with pytest.raises(IndexError):
            call(-1)


# ---- weights ----

def test_round_robin_is_exactly_proportional():
    b = make_balancer("round_robin", [1, 2, 3])
    assert counts(b, 60_000) == [10_000, 20_000, 30_000]


def test_round_robin_equal_weights_rotates():
    b = make_balancer("round_robin", [1, 1, 1])
    seq = [b.pick_endpoint() for _ in range(300)]
    assert all(x != y for x, y in itertools.pairwise(seq))
    assert [seq.count(i) for i in range(3)] == [100, 100, 100]


def test_round_robin_is_smooth():
    b = make_balancer("round_robin", [5, 1, 1])
    seq = [b.pick_endpoint() for _ in range(70)]
    # nginx's smooth WRR order for weights 5,1,1: the light endpoints sit inside the heavy one's run.
    assert seq[:7] == [0, 0, 1, 0, 2, 0, 0]
    for cycle in range(10):
        window = seq[cycle * 7:(cycle + 1) * 7]
        assert [window.count(i) for i in range(3)] == [5, 1, 1]
        assert window[0] == 0 and window[-1] == 0


def test_random_follows_weights():
    b = make_balancer("random", [1, 2, 3], seed=SEED)
    seen = counts(b, 60_000)
    for got, want in zip(seen, (10_000, 20_000, 30_000)):
        # Binomial sd here is < 120 picks; 1,000 is over 8 sd and still catches a flat or biased draw.
        assert abs(got - want) < 1_000, seen


def test_random_equal_weights_is_uniform():
    b = make_balancer("random", [7] * 4, seed=SEED)
    seen = counts(b, 40_000)
    assert all(abs(got - 10_000) < 600 for got in seen), seen


def test_least_request_follows_weights_under_load():
    # Requests that stay open: active/weight balancing must leave loads in proportion to weights.
    b = make_balancer("least_request", [1, 2, 3], seed=SEED)
    for _ in range(60_000):
        b.start(b.pick_endpoint())
    active = b.active_counts()
    assert sum(active) == 60_000
    for got, want in zip(active, (10_000, 20_000, 30_000)):
        assert abs(got - want) < 300, active


def test_least_request_idle_still_favours_heavier():
    # With nothing in flight every pair ties, so only the weighted draw of the pair steers the split.
    b = make_balancer("least_request", [1, 2, 3], seed=SEED)
    seen = counts(b, 60_000)
    assert seen[0] < seen[1] < seen[2], seen
    assert min(seen) > 6_000, seen


def test_least_request_prefers_fewer_active():
    b = make_balancer("least_request", [1, 1, 1], seed=SEED)
    for _ in range(10):
        b.start(0)
    seen = [0, 0, 0]
    for _ in range(30_000):
        i = b.pick_endpoint()
        seen[i] += 1
        if i != 0:
            b.start(i)
            b.end(i)
    # Endpoint 0 is always drawn against an idle endpoint, so it never wins.
    assert seen[0] == 0, seen
    assert abs(seen[1] - seen[2]) < 1_500, seen
    assert b.active_counts() == [10, 0, 0]


def test_least_request_weights_scale_load():
    # 10 active on weight 10 is a lighter load than 2 active on weight 1.
    b = make_balancer("least_request", [10, 1], seed=SEED)
    for _ in range(10):
        b.start(0)
    b.start(1)
    b.start(1)
    assert {b.pick_endpoint() for _ in range(200)} == {0}


# ---- up / down ----

@pytest.mark.parametrize("name", NAMES)
def test_down_endpoints_never_picked(name):
    b = make_balancer(name, [3, 1, 2, 1, 5], seed=SEED)
    b.mark_down(0)
    b.mark_down(4)
    assert b.up_count == 3
    seen = counts(b, 6_000)
    assert seen[0] == 0 and seen[4] == 0
    assert all(seen[i] > 0 for i in (1, 2, 3)), seen


@pytest.mark.parametrize("name", NAMES)
def test_all_down_picks_nothing(name):
    b = make_balancer(name, [1, 2], seed=SEED)
    b.mark_down(0)
    b.mark_down(1)
    assert b.up_count == 0
    assert b.pick_endpoint() == -1
    assert b.pick_endpoint(1) == -1


@pytest.mark.parametrize("name", NAMES)
def test_mark_up_after_down(name):
    b = make_balancer(name, [1, 1, 1], seed=SEED)
    b.mark_down(1)
    assert 1 not in {b.pick_endpoint() for _ in range(300)}
    b.mark_up(1)
    assert b.up_count == 3
    assert 1 in {b.pick_endpoint() for _ in range(300)}


@pytest.mark.parametrize("name", NAMES)
def test_repeated_events_are_idempotent(name):
    b = make_balancer(name, [1, 1, 1])
    b.mark_down(2)
    b.mark_down(2)
    assert b.up_count == 2
    b.mark_up(0)
    assert b.up_count == 2
    b.mark_up(2)
    b.mark_up(2)
    assert b.up_count == 3


def test_round_robin_down_then_up_stays_proportional():
    b = make_balancer("round_robin", [4, 2, 1])
    counts(b, 3)  # stop mid-cycle, so endpoint 2 goes down with a non-zero score
    b.mark_down(2)
    assert counts(b, 600) == [400, 200, 0]
    b.mark_up(2)
    seen = counts(b, 7_000)
    # Exact over whole cycles, give or take the score endpoint 2 kept while down.
    assert all(abs(got - want) <= 1 for got, want in zip(seen, (4_000, 2_000, 1_000))), seen


# ---- avoid ----

@pytest.mark.parametrize("name", NAMES)
def test_avoid_is_not_picked_while_others_are_up(name):
    b = make_balancer(name, [1, 5, 2], seed=SEED)
    for avoid in range(3):
        seen = counts(b, 3_000, avoid)
        assert seen[avoid] == 0, (avoid, seen)
        assert all(seen[i] > 0 for i in range(3) if i != avoid), (avoid, seen)


@pytest.mark.parametrize("name", NAMES)
def test_avoid_is_picked_when_it_is_the_only_one_up(name):
    b = make_balancer(name, [1, 1, 1], seed=SEED)
    b.mark_down(0)
    b.mark_down(2)
    assert [b.pick_endpoint(1) for _ in range(20)] == [1] * 20


@pytest.mark.parametrize("name", NAMES)
def test_avoid_down_or_out_of_range_changes_nothing(name):
    b = make_balancer(name, [1, 1], seed=SEED)
    b.mark_down(0)
    assert {b.pick_endpoint(0) for _ in range(50)} == {1}
    assert {b.pick_endpoint(7) for _ in range(50)} == {1}
    assert {b.pick_endpoint(-5) for _ in range(50)} == {1}


@pytest.mark.parametrize("name", NAMES)
def test_avoid_with_one_other_up(name):
    b = make_balancer(name, [1, 9, 1], seed=SEED)
    b.mark_down(2)
    assert {b.pick_endpoint(1) for _ in range(100)} == {0}
    assert {b.pick_endpoint(0) for _ in range(100)} == {1}


def test_random_avoid_keeps_the_others_weights():
    b = make_balancer("random", [1, 2, 3], seed=SEED)
    seen = counts(b, 30_000, avoid=2)
    assert seen[2] == 0
    assert abs(seen[0] - 10_000) < 600 and abs(seen[1] - 20_000) < 600, seen


def test_round_robin_avoid_keeps_rotating():
    b = make_balancer("round_robin", [1, 1, 1, 1])
    seq = [b.pick_endpoint(avoid=2) for _ in range(300)]
    assert 2 not in seq
    assert [seq.count(i) for i in (0, 1, 3)] == [100, 100, 100]


# ---- single endpoint, counters ----

@pytest.mark.parametrize("name", NAMES)
def test_single_endpoint(name):
    b = make_balancer(name, [4])
    assert [b.pick_endpoint() for _ in range(5)] == [0] * 5
    assert b.pick_endpoint(0) == 0
    b.mark_down(0)
    assert b.pick_endpoint() == -1
    b.mark_up(0)
    assert b.pick_endpoint() == 0


@pytest.mark.parametrize("name", NAMES)
def test_active_counts_track_start_end(name):
    b = make_balancer(name, [1, 1, 1])
    b.start(0)
    b.start(0)
    b.start(2)
    assert b.active_counts() == [2, 0, 1]
    b.end(0)
    b.end(1)  # an end with nothing in flight stays at zero rather than going negative
    assert b.active_counts() == [1, 0, 1]


@pytest.mark.parametrize("name", NAMES)
def test_bench_picks_leaves_no_requests_in_flight(name):
    b = make_balancer(name, [1, 2, 3, 4], seed=SEED)
    assert b.bench_picks(10_000) == 0
    assert b.active_counts() == [0, 0, 0, 0]
    b.mark_down(0)
    b.mark_down(1)
    b.mark_down(2)
    b.mark_down(3)
    assert b.bench_picks(100) == 100


@pytest.mark.parametrize("name", ["random", "least_request"])
def test_unseeded_balancers_draw_differently(name):
    # Each balancer seeds itself from os.urandom: two of them must not walk the same sequence.
    a = make_balancer(name, [1] * 50)
    b = make_balancer(name, [1] * 50)
    assert [a.pick_endpoint() for _ in range(200)] != [b.pick_endpoint() for _ in range(200)]


def test_reseed_replays_the_sequence():
    b = make_balancer("random", [1, 2, 3, 4, 5])
    b.reseed(99)
    first = [b.pick_endpoint() for _ in range(500)]
    b.reseed(99)
    assert [b.pick_endpoint() for _ in range(500)] == first


# ---- any sequence of events ----

EVENTS = st.lists(st.tuples(st.sampled_from(["up", "down", "start", "end", "pick"]),
                            st.integers(0, 7), st.integers(-1, 8)), max_size=200)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(weights=st.lists(st.integers(1, 50), min_size=1, max_size=8), events=EVENTS,
       seed=st.integers(0, 2**64 - 1))
def test_any_event_sequence_keeps_the_rules(name, weights, events, seed):
    b = make_balancer(name, weights, seed=seed)
    n = len(weights)
    up = [True] * n
    active = [0] * n
    for op, i, avoid in events:
        i %= n
        if op == "up":
            b.mark_up(i)
            up[i] = True
        elif op == "down":
            b.mark_down(i)
            up[i] = False
        elif op == "start":
            b.start(i)
            active[i] += 1
        elif op == "end":
            b.end(i)
            active[i] = max(0, active[i] - 1)
        else:
            got = b.pick_endpoint(avoid)
            ups = [k for k in range(n) if up[k]]
            if not ups:
                assert got == -1
            elif ups == [avoid]:
                assert got == avoid
            else:
                assert got in ups and got != avoid
        assert b.up_count == sum(up)
    assert b.active_counts() == active
