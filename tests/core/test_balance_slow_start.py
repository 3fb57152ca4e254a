"""Slow start: an endpoint that comes back ramps from 10% to its full share over the window, on every algorithm."""
import pytest

from fastmesh._core.balance.factory import ALGORITHMS, HASHING, make_balancer
from fastmesh._core.balance.hashing import hash_key

SEED = 20240601
T0 = 5000.0
WINDOW = 30.0
DRAWN = sorted(set(ALGORITHMS) - HASHING)
KEYS = [hash_key(b"client-%d" % k) for k in range(40_000)]
IDS = [hash_key(b"10.1.0.%d:9000" % i) for i in range(10)]


def share(b, i, picks=20_000):
    return sum(1 for _ in range(picks) if b.pick_endpoint() == i) / picks


def recovered(name, weights, **options):
    # A balancer whose last endpoint went down and came back at T0.
    b = make_balancer(name, weights, seed=SEED, slow_start=WINDOW, **options)
    b.set_now(T0 - 100.0)
    b.mark_down(len(weights) - 1)
    b.set_now(T0)
    b.mark_up(len(weights) - 1)
    return b


@pytest.mark.parametrize("name", DRAWN)
def test_share_ramps_over_the_window(name):
    b = recovered(name, [1, 1, 1, 1])
    got = []
    for t in (0.0, 10.0, 20.0, WINDOW + 0.1):
        b.set_now(T0 + t)
        got.append(share(b, 3))
    assert got[0] < 0.06, got                 # about 10% of a full share (25%)
    assert got[0] < got[1] < got[2] < got[3], got
    assert 0.22 < got[3] < 0.28, got          # full share once the window is over
    assert b.ramping_count == 0


def test_round_robin_follows_the_ramped_weights_exactly():
    b = recovered("round_robin", [1, 1, 1, 1])
    # Weights become 100, 100, 100, 10 (1% steps); whole cycles are exact.
    assert b.effective_weights() == [100, 100, 100, 10]
    seen = [0] * 4
    for _ in range(3_100):
        seen[b.pick_endpoint()] += 1
    assert seen == [1_000, 1_000, 1_000, 100]
    b.set_now(T0 + 15.0)
    assert b.effective_weights() == [100, 100, 100, 55]


def test_effective_weight_is_linear_from_ten_percent():
    b = recovered("random", [4, 2])
    for t, want in ((0.0, 20), (7.5, 65), (15.0, 110), (22.5, 155)):
        b.set_now(T0 + t)
        assert b.effective_weights() == [400, want], t
    b.set_now(T0 + WINDOW)
    assert b.effective_weights() == [4, 2] == b.configured_weights()


def test_weights_are_recomputed_on_a_coarse_tick():
    # Once per window / 50 (0.6 s here), not on every clock update.
    b = recovered("random", [1, 1])
    b.set_now(T0 + 0.3)
    assert b.effective_weights() == [100, 10]
    b.set_now(T0 + 0.6)
    assert b.effective_weights() == [100, 12]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_endpoints_present_at_creation_start_at_full_weight(name):
    b = make_balancer(name, [1, 2, 3], seed=SEED, slow_start=WINDOW)
    b.set_now(T0)
    assert b.ramping_count == 0
    assert b.effective_weights() == [1, 2, 3]
    assert b.slow_start_window == WINDOW


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_without_a_clock_an_endpoint_comes_back_at_full_weight(name):
    # No owner clock means no way to end a ramp: better full weight at once than stuck at 10%.
    b = make_balancer(name, [1, 1], seed=SEED, slow_start=WINDOW)
    b.mark_down(1)
    b.mark_up(1)
    assert b.ramping_count == 0
    assert b.effective_weights() == [1, 1]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_slow_start_off_by_default(name):
    b = make_balancer(name, [1, 1], seed=SEED)
    b.set_now(T0)
    b.mark_down(1)
    b.mark_up(1)
    assert b.ramping_count == 0 and b.slow_start_window == 0.0


def test_going_down_ends_the_ramp_and_coming_back_restarts_it():
    b = recovered("round_robin", [1, 1])
    b.set_now(T0 + 20.0)
    assert b.effective_weights() == [100, 70]
    b.mark_down(1)
    assert b.ramping_count == 0 and b.effective_weights() == [1, 1]
    b.set_now(T0 + 25.0)
    b.mark_up(1)
    assert b.ramping_count == 1 and b.effective_weights() == [100, 10]


def test_several_ramps_at_once():
    b = make_balancer("random", [1, 1, 1], seed=SEED, slow_start=10.0)
    b.set_now(T0)
    b.mark_down(1)
    b.mark_down(2)
    b.mark_up(1)
    b.set_now(T0 + 5.0)
    b.mark_up(2)
    assert b.ramping_count == 2
    assert b.effective_weights() == [100, 55, 10]
    b.set_now(T0 + 10.0)
    assert b.ramping_count == 1
    assert b.effective_weights() == [100, 100, 55]
    b.set_now(T0 + 15.0)
    assert b.ramping_count == 0 and b.effective_weights() == [1, 1, 1]


def test_huge_weights_do_not_overflow():
    b = recovered("least_request", [2**31 - 1, 1])
    assert b.effective_weights() == [2**31 - 1, 1]   # no room to scale: the ramping one keeps >= 1
    b2 = recovered("least_request", [1, 2**31 - 1])
    assert b2.effective_weights() == [1, round((2**31 - 1) * 0.1)]
    assert {b2.pick_endpoint() for _ in range(200)} <= {0, 1}


@pytest.mark.parametrize("name", sorted(HASHING))
def test_hashing_ramp_moves_the_endpoint_keys_back_once(name):
    b = make_balancer(name, [1] * 10, seed=SEED, slow_start=WINDOW, ids=IDS)
    b.set_now(T0 - 100.0)
    before = [b.pick_hashed(k) for k in KEYS]
    own = [k for k, i in zip(KEYS, before) if i == 3]
    others = [(k, i) for k, i in zip(KEYS, before) if i != 3]
    b.mark_down(3)
    b.set_now(T0)
    b.mark_up(3)
    admitted = []
    for t in (0.0, 10.0, 20.0, WINDOW + 0.1):
        b.set_now(T0 + t)
        admitted.append({k for k in own if b.pick_hashed(k) == 3})
        # Keys of the other endpoints never move while it ramps.
        assert all(b.pick_hashed(k) == i for k, i in others[:5_000])
    fractions = [len(a) / len(own) for a in admitted]
    assert 0.06 < fractions[0] < 0.14, fractions    # 10%
    assert 0.35 < fractions[1] < 0.45, fractions    # 40%
    assert 0.65 < fractions[2] < 0.75, fractions    # 70%
    assert fractions[3] == 1.0
    # A key that came back stays back as the share grows.
    assert admitted[0] <= admitted[1] <= admitted[2] <= admitted[3]
    assert b.ramping_count == 0


@pytest.mark.parametrize("name", sorted(HASHING))
def test_hashing_turned_away_keys_go_where_they_went_while_it_was_down(name):
    b = make_balancer(name, [1] * 10, seed=SEED, slow_start=WINDOW, ids=IDS)
    b.set_now(T0)
    b.mark_down(3)
    while_down = [b.pick_hashed(k) for k in KEYS[:10_000]]
    b.mark_up(3)
    ramping = [b.pick_hashed(k) for k in KEYS[:10_000]]
    assert all(r == d for r, d in zip(ramping, while_down) if r != 3)


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_bad_window_rejected(value):
    with pytest.raises(ValueError):
        make_balancer("round_robin", [1], slow_start=value)
