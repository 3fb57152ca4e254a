"""Cluster.update: an endpoint set applied in place keeps what the cluster knows of unchanged endpoints (latency,
ejection, health, in-flight counts), starts added ones in slow start, retires removed ones for good while their
in-flight requests finish on their index, and serves priority tiers in order of preference."""
import socket

import pytest

from fastmesh._core.balance.factory import ALGORITHMS, make_balancer
from fastmesh._core.balance.hashing import hash_key
from fastmesh._core.cluster import Cluster

T0 = 1000.0
V4 = socket.AF_INET


def addr(port, tier=0):
    return (V4, "127.0.0.1", port, tier)


def row(port, weight=1, tier=0):
    # Cluster.update's table entry: (family, ip, port, weight, tier, id).
    return (V4, "127.0.0.1", port, weight, tier, hash_key(f"127.0.0.1:{port}".encode()))


def make(name="round_robin", ports=(1, 2, 3), slow_start=0.0, tiers=None, outlier=True, **options):
    tiers = tiers or [0] * len(ports)
    ids = [hash_key(f"127.0.0.1:{p}".encode()) for p in ports]
    if name in ("ring_hash", "maglev"):
        options["ids"] = ids
    b = make_balancer(name, [1] * len(ports), seed=7, slow_start=slow_start, **options)
    c = Cluster("c", [addr(p, t) for p, t in zip(ports, tiers)], b)
    c.set_outlier(outlier, consecutive_failures=2, base_ejection=30.0)
    b.set_now(T0)
    c.tick(T0)
    return c


def picks(c, count=3000):
    seen = {}
    for _ in range(count):
        i = c.pick()
        seen[i] = seen.get(i, 0) + 1
    return seen


def states(c):
    return {e["address"]: e["state"] for e in c.endpoints()}


def test_unchanged_endpoints_keep_latency_ejection_and_health():
    c = make("ewma", ports=(1, 2, 3, 4))
    b = c.balancer
    for _ in range(20):
        b.observe_py(0, 0.004)
        b.observe_py(3, 0.002)
    cost_before = b.costs()
    c.request_fail(1, T0)
    c.request_fail(1, T0)                   # two in a row eject endpoint 1 (consecutive_failures = 2)
    c.set_health(2, False)
    b.start(0)                              # a request in flight to endpoint 0
    assert states(c) == {"127.0.0.1:1": "up", "127.0.0.1:2": "ejected", "127.0.0.1:3": "unhealthy",
                         "127.0.0.1:4": "up"}

    added, removed, changed = c.update([row(1), row(2), row(3), None, row(5)])   # 4 goes, 5 comes
    assert (added, removed, changed) == (1, 1, 0)
    assert states(c) == {"127.0.0.1:1": "up", "127.0.0.1:2": "ejected", "127.0.0.1:3": "unhealthy",
                         "127.0.0.1:5": "up"}
    assert c.ejected_count == 1
    assert b.costs()[0] == pytest.approx(cost_before[0])            # the estimate survived
    assert b.active_counts()[0] == 1                                # and the request in flight
    assert b.costs()[4] == pytest.approx(b.typical_cost())          # new: the cluster's typical cost
    assert [e["eligible"] for e in c.endpoints()] == [True, False, False, True]
    assert set(picks(c)) <= {0, 4}
    # The ejection runs its course as before the update.
    c.tick(T0 + 40.0)
    assert states(c)["127.0.0.1:2"] == "up" and c.ejected_count == 0
    b.end(0)
    assert b.active_counts()[0] == 0


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_removed_endpoint_is_never_picked_and_its_request_finishes_on_its_index(name):
    c = make(name, ports=(1, 2, 3))
    b = c.balancer
    b.start(1)                              # in flight to endpoint 1 when it is removed
    c.update([row(1), None, row(3)])
    assert 1 not in picks(c)
    assert 1 not in [c.balancer.pick_hashed(k) for k in range(500)]
    assert c.live_count == 2 and c.slots == 3
    assert [e["index"] for e in c.endpoints()] == [0, 2]
    assert b.active_counts()[1] == 1
    c.request_ok(1)                         # its outcome reports to the tombstone, nowhere else
    c.request_fail(1, T0)
    c.request_fail(1, T0)
    b.end(1)
    assert b.active_counts() == [0, 0, 0] and c.ejected_count == 0
    c.tick(T0 + 100.0)
    assert 1 not in picks(c)
    # A removed endpoint coming back is a new endpoint in a new slot: the tombstone is never reused.
    c.update([row(1), None, row(3), row(2)])
    assert set(picks(c)) == {0, 2, 3}


def test_added_endpoint_enters_slow_start():
    c = make("round_robin", ports=(1, 2, 3), slow_start=30.0)
    c.update([row(1), row(2), row(3), row(4)])
    b = c.balancer
    shares = []
    for t in (0.0, 15.0, 31.0):
        b.set_now(T0 + t)
        seen = picks(c, 4000)
        shares.append(seen.get(3, 0) / 4000)
    assert shares[0] < 0.05                 # 10% of a full share (25%) at first
    assert shares[0] < shares[1] < shares[2]
    assert 0.23 < shares[2] < 0.27          # full share once the window is over
    assert b.ramping_count == 0


def test_weights_change_in_place():
    c = make("round_robin", ports=(1, 2))
    c.update([row(1, weight=3), row(2, weight=1)])
    seen = picks(c, 4000)
    assert seen == {0: 3000, 1: 1000}
    assert c.balancer.configured_weights() == [3, 1]


def test_an_update_that_does_not_extend_the_slots_changes_nothing():
    c = make("round_robin", ports=(1, 2, 3))
    with pytest.raises(ValueError):
        c.update([row(1), row(9), row(3)])              # another address where 2 was
    with pytest.raises(ValueError):
        c.update([row(1), row(2)])                      # fewer slots
    with pytest.raises(ValueError):
        c.update([row(1), row(2), row(3), (V4, "not-an-ip", 4, 1, 0, 0)])
    assert [e["address"] for e in c.endpoints()] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    c.update([row(1), None, row(3)])
    with pytest.raises(ValueError):
        c.update([row(1), row(2), row(3)])              # a tombstone is not brought back in place
    assert c.live_count == 2


def test_consistent_hash_keys_of_unchanged_endpoints_stay_put():
    c = make("ring_hash", ports=tuple(range(1, 11)))
    keys = [hash_key(b"user-%d" % k) for k in range(2000)]
    before = [c.balancer.pick_hashed(k) for k in keys]
    c.update([row(p) for p in range(1, 11)] + [row(11)])
    after = [c.balancer.pick_hashed(k) for k in keys]
    moved = [(x, y) for x, y in zip(before, after) if x != y]
    assert all(y == 10 for _, y in moved)               # only to the new endpoint
    assert 0 < len(moved) < 400                         # about 1/11 of the keys


def test_a_lower_priority_tier_serves_only_while_the_preferred_one_has_no_eligible_endpoint():
    c = make("round_robin", ports=(1, 2, 3, 4), tiers=[0, 0, 1, 2])
    assert set(picks(c)) == {0, 1}
    assert states(c)["127.0.0.1:3"] == "standby" and c.serving_tier == 0
    c.set_health(0, False)
    assert set(picks(c)) == {1}
    c.request_fail(1, T0)
    c.request_fail(1, T0)                   # ejected: tier 0 has nothing eligible left
    assert c.serving_tier == 1 and set(picks(c)) == {2}
    c.connect_fail(2, T0)                   # tier 1 marked down too: tier 2
    assert c.serving_tier == 2 and set(picks(c)) == {3}
    c.set_health(0, True)                   # one preferred endpoint back: it takes over at once
    assert c.serving_tier == 0 and set(picks(c)) == {0}
    assert states(c) == {"127.0.0.1:1": "up", "127.0.0.1:2": "ejected", "127.0.0.1:3": "down",
                         "127.0.0.1:4": "standby"}


def test_tiers_follow_updates():
    c = make("round_robin", ports=(1, 2), tiers=[0, 1])
    assert set(picks(c)) == {0}
    c.update([None, row(2, tier=1)])                    # the preferred tier is gone: the other serves
    assert set(picks(c)) == {1}
    c.update([None, row(2, tier=1), row(3, tier=0)])    # a preferred endpoint appears
    assert set(picks(c)) == {2}
    assert states(c) == {"127.0.0.1:2": "standby", "127.0.0.1:3": "up"}


def test_ten_thousand_endpoints_replaced_in_one_update():
    ports = range(10_000)
    b = make_balancer("round_robin", [1] * 10_000, seed=1)
    c = Cluster("big", [(V4, f"10.{p // 250 // 250}.{p // 250 % 250}.{p % 250}", 80) for p in ports], b)
    table = [None] * 10_000 + [(V4, f"10.9.{p // 250}.{p % 250}", 81, 1, 0, p) for p in ports]
    assert c.update(table) == (10_000, 10_000, 0)
    assert c.live_count == 10_000 and c.slots == 20_000
    seen = set(picks(c, 20_000))
    assert min(seen) >= 10_000 and len(seen) == 10_000   # round robin: every new endpoint once per cycle


def test_a_rebuilt_cluster_adopts_what_the_old_one_knew_by_address():
    old = make("ewma", ports=(1, 2, 3))
    for _ in range(10):
        old.balancer.observe_py(2, 0.5)
    old.request_fail(0, T0)
    old.request_fail(0, T0)
    old.set_health(1, False)
    new = make("ewma", ports=(3, 1, 9))                 # compacted: other slots
    new.adopt(old)
    assert states(new) == {"127.0.0.1:3": "up", "127.0.0.1:1": "ejected", "127.0.0.1:9": "up"}
    assert new.balancer.costs()[0] == pytest.approx(old.balancer.costs()[2], rel=0.01)
    assert new.ejected_count == 1
    assert set(picks(new)) <= {0, 2}
