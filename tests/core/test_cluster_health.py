"""Cluster eligibility: connect marks, active health and outlier ejection as independent reasons, driven directly."""
from __future__ import annotations

import socket

import pytest

from fastmesh._core.balance.factory import make_balancer
from fastmesh._core.cluster import Cluster

T0 = 1000.0     # a monotonic time to start from; every call below gives its own `now`


def cluster(n: int = 3, *, outlier: bool = True, balancer: str = "round_robin", **settings: object) -> Cluster:
    endpoints = [(socket.AF_INET, "127.0.0.1", 9000 + i) for i in range(n)]
    c = Cluster("web", endpoints, make_balancer(balancer, [1] * n, seed=7))
    if outlier:
        options = dict(consecutive_failures=5, base_ejection=10.0, max_ejection=300.0, max_ejected_percent=50)
        options.update(settings)
        c.set_outlier(True, **options)
    return c


def picks(c: Cluster, count: int = 30) -> set[int]:
    return {c.pick() for _ in range(count)}


def ep(c: Cluster, i: int) -> dict:
    return c.endpoints()[i]


def eject(c: Cluster, i: int, now: float, failures: int = 5) -> None:
    for _ in range(failures):
        c.request_fail(i, now)


# ---- reasons are independent ------------------------------------------------------------------------------------

def test_unhealthy_endpoint_gets_no_picks_until_healthy_again():
    c = cluster(outlier=False)
    c.set_health(1, False)
    assert picks(c) == {0, 2}
    e = ep(c, 1)
    assert (e["healthy"], e["eligible"], e["ejected"], e["state"]) == (False, False, False, "unhealthy")
    c.set_health(1, True)
    assert picks(c) == {0, 1, 2}
    assert (ep(c, 1)["healthy"], ep(c, 1)["state"]) == (True, "up")


def test_one_reason_ending_does_not_readmit_while_another_holds():
    c = cluster()
    c.set_health(1, False)
    c.connect_fail(1, T0)                       # connect mark on top of the failed checks
    assert ep(c, 1)["state"] == "down"
    c.connect_ok(1)                             # the mark clears, the checks still say no
    assert ep(c, 1)["state"] == "unhealthy" and picks(c) == {0, 2}
    eject(c, 1, T0)                             # and now ejected as well
    c.set_health(1, True)
    assert ep(c, 1)["state"] == "ejected" and picks(c) == {0, 2}
    c.tick(T0 + 13.0)                           # the ejection (10 s +-20%) ends: nothing holds it out any more
    assert ep(c, 1)["eligible"] and picks(c) == {0, 1, 2}


def test_connect_mark_readmits_after_backoff():
    c = cluster(outlier=False)
    c.connect_fail(2, T0)
    assert picks(c) == {0, 1} and ep(c, 2)["state"] == "down"
    c.tick(T0 + 0.6)                            # 0.5 s backoff: back on probation
    assert ep(c, 2)["state"] == "probing" and 2 in picks(c)


def test_every_endpoint_out_fails_open():
    c = cluster(outlier=False)
    for i in range(3):
        c.set_health(i, False)
    assert not any(e["eligible"] for e in c.endpoints())
    # No endpoint is eligible, so choose() goes round all of them rather than refusing.
    assert [c.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert c.pick(avoid=0) != 0


def test_health_index_is_checked():
    c = cluster(2)
    with pytest.raises(IndexError):
        c.set_health(2, False)
    with pytest.raises(IndexError):
        c.request_fail(-1, T0)


# ---- outlier ejection -------------------------------------------------------------------------------------------

def test_consecutive_failures_eject_and_a_success_resets_the_run():
    c = cluster()
    eject(c, 0, T0, failures=4)
    c.request_ok(0)
    eject(c, 0, T0, failures=4)
    assert not ep(c, 0)["ejected"] and ep(c, 0)["consecutive_failures"] == 4
    c.request_fail(0, T0)
    e = ep(c, 0)
    assert e["ejected"] and e["state"] == "ejected" and not e["eligible"] and e["healthy"]
    assert T0 + 8.0 <= e["ejected_until"] <= T0 + 12.0        # 10 s +-20%
    assert (e["ejections"], c.ejected_count, c.counts["ejections"]) == (1, 1, 1)
    assert picks(c) == {1, 2}


def test_readmitted_on_trial_then_ejected_again_for_longer():
    c = cluster()
    eject(c, 0, T0)
    until = ep(c, 0)["ejected_until"]
    c.tick(until - 0.01)
    assert ep(c, 0)["ejected"]
    c.tick(until)
    assert not ep(c, 0)["ejected"] and 0 in picks(c)
    c.request_fail(0, until + 0.1)                            # the trial request fails: out again at once
    e = ep(c, 0)
    assert e["ejected"] and e["ejections"] == 2
    assert until + 0.1 + 16.0 <= e["ejected_until"] <= until + 0.1 + 24.0   # 20 s +-20%
    assert c.counts["ejections"] == 2


def test_trial_success_means_a_fresh_run_of_failures_is_needed():
    c = cluster()
    eject(c, 0, T0)
    c.tick(T0 + 13.0)
    c.request_ok(0)
    eject(c, 0, T0 + 14.0, failures=4)
    assert not ep(c, 0)["ejected"]
    c.request_fail(0, T0 + 14.0)
    e = ep(c, 0)
    assert e["ejected"] and e["ejections"] == 2               # the count has not decayed yet: 20 s this time
    assert T0 + 14.0 + 16.0 <= e["ejected_until"] <= T0 + 14.0 + 24.0


def test_ejection_count_decays_after_clean_minutes():
    c = cluster()
    eject(c, 0, T0)
    c.tick(T0 + 13.0)
    c.request_ok(0)
    c.tick(T0 + 13.0 + 59.0)
    assert ep(c, 0)["ejections"] == 1
    c.tick(T0 + 13.0 + 61.0)                                  # a clean minute since re-admission
    assert ep(c, 0)["ejections"] == 0
    eject(c, 0, T0 + 80.0)
    assert ep(c, 0)["ejected_until"] <= T0 + 80.0 + 12.0      # back to the base ejection


def test_ejection_is_capped_at_max_ejection():
    c = cluster(base_ejection=1.0, max_ejection=3.0)
    now = T0
    lengths = []
    for _ in range(4):
        eject(c, 0, now, failures=1 if ep(c, 0)["ejections"] else 5)   # on trial, one failure is enough
        lengths.append(ep(c, 0)["ejected_until"] - now)
        now = ep(c, 0)["ejected_until"]
        c.tick(now)
    assert 0.8 <= lengths[0] <= 1.2 and 1.6 <= lengths[1] <= 2.4
    assert lengths[2:] == [3.0, 3.0]


def test_max_ejected_percent_caps_ejections():
    c = cluster(2)                                            # 50% of 2 endpoints: one may be out
    eject(c, 0, T0)
    eject(c, 1, T0)
    assert [e["ejected"] for e in c.endpoints()] == [True, False]
    assert c.counts["ejections"] == 1 and picks(c) == {1}
    # The skipped endpoint keeps its run: once the first is back, its next failure ejects it.
    c.tick(T0 + 13.0)
    c.request_ok(0)
    c.request_fail(1, T0 + 13.5)
    assert [e["ejected"] for e in c.endpoints()] == [False, True]


def test_single_endpoint_is_never_ejected_at_50_percent():
    c = cluster(1)
    eject(c, 0, T0, failures=20)
    assert not ep(c, 0)["ejected"] and c.pick() == 0


def test_max_ejected_percent_100_allows_all_and_choose_fails_open():
    c = cluster(2, max_ejected_percent=100)
    eject(c, 0, T0)
    eject(c, 1, T0)
    assert c.ejected_count == 2
    assert {c.pick() for _ in range(4)} == {0, 1}


def test_failures_while_ejected_do_not_extend_it():
    c = cluster()
    eject(c, 0, T0)
    until = ep(c, 0)["ejected_until"]
    eject(c, 0, T0 + 1.0)                                     # requests that were in flight
    assert ep(c, 0)["ejected_until"] == until and ep(c, 0)["ejections"] == 1


# ---- connects: the TCP path --------------------------------------------------------------------------------------

def test_connect_failures_count_and_connect_success_refutes_them():
    c = cluster()
    for k in range(4):
        c.connect_fail(0, T0 + k)
    c.connect_ok(0)
    assert ep(c, 0)["consecutive_failures"] == 0
    for k in range(5):
        c.connect_fail(0, T0 + 10 + k)
    e = ep(c, 0)
    assert e["ejected"] and e["state"] == "down"              # the connect mark is the more telling word
    c.connect_ok(0)                                           # e.g. a fail-open try got through
    assert ep(c, 0)["state"] == "ejected"


def test_connect_success_does_not_refute_http_failures():
    c = cluster()
    for _ in range(5):
        c.connect_ok(0)                                       # a fresh connection per request...
        c.request_fail(0, T0)                                 # ...each answered with a 5xx
    assert ep(c, 0)["ejected"]


def test_connect_success_ends_a_trial_after_connect_failures_only():
    c = cluster()
    for k in range(5):
        c.connect_fail(0, T0 + k)
    until = ep(c, 0)["ejected_until"]
    c.tick(until + 30.0)                                      # ejection and connect mark both over
    c.connect_ok(0)
    c.connect_fail(0, until + 30.5)                           # a single failure no longer ejects
    assert not ep(c, 0)["ejected"]


# ---- success rate ------------------------------------------------------------------------------------------------

def test_success_rate_ejects_at_the_end_of_the_window():
    c = cluster(outlier=False)
    c.tick(T0)                                                # the window starts at the clock's reading
    c.set_outlier(True, consecutive_failures=5, base_ejection=10.0, max_ejection=300.0, max_ejected_percent=50,
                  success_rate_window=10.0, success_rate_minimum=10, success_rate_threshold=0.5)
    for _ in range(4):                                        # 40% success, never 5 failures in a row
        c.request_ok(0)
        c.request_fail(0, T0 + 1)
        c.request_fail(0, T0 + 1)
        c.request_ok(1)
        c.request_fail(1, T0 + 1)
    c.request_fail(2, T0 + 1)                                 # 1 outcome: below minimum_requests, not judged
    c.tick(T0 + 5.0)
    assert c.ejected_count == 0                               # the window has not ended
    c.tick(T0 + 10.0)
    assert [e["ejected"] for e in c.endpoints()] == [True, False, False]   # 40% < 50%; 50% is not below
    # The window restarted: old outcomes are gone.
    c.tick(T0 + 20.0)
    assert c.ejected_count == 1


def test_outlier_off_never_ejects_and_turning_it_off_readmits():
    c = cluster(outlier=False)
    eject(c, 0, T0, failures=50)
    assert c.ejected_count == 0 and 0 in picks(c)
    c2 = cluster()
    eject(c2, 0, T0)
    assert c2.ejected_count == 1
    c2.set_outlier(False)
    assert c2.ejected_count == 0 and 0 in picks(c2)


def test_bad_outlier_settings_are_refused():
    c = cluster(outlier=False)
    with pytest.raises(ValueError):
        c.set_outlier(True, consecutive_failures=0)
    with pytest.raises(ValueError):
        c.set_outlier(True, base_ejection=10.0, max_ejection=1.0)


def test_check_counters_and_published_state_in_stats():
    from fastmesh._core.stats import ENDPOINT_STATES
    c = cluster()
    c.count_check(True)
    c.count_check(True)
    c.count_check(False)
    assert (c.counts["checks_ok"], c.counts["checks_failed"]) == (2, 1)
    assert ENDPOINT_STATES[3:] == ("unhealthy", "ejected", "removed", "standby")
    c.set_health(2, False)
    eject(c, 0, T0)
    assert [e["state"] for e in c.endpoints()] == ["ejected", "up", "unhealthy"]
