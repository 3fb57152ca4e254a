"""The request policy's arithmetic, driven directly: the retry budget's sliding window and the adaptive limit."""
from fastmesh._core.policy import ConcurrencyLimit, RetryBudget


def test_budget_allows_percent_of_the_window_plus_the_floor() -> None:
    budget = RetryBudget(0.2, 1.0, 10.0)           # 20% of requests + 1/s over 10 s
    for i in range(100):
        budget.deposit_at(100.0 + i * 0.01)
    allowed = sum(budget.withdraw_at(101.0) for _ in range(100))
    assert allowed == 30                            # 0.2 * 100 + 1 * 10
    assert budget.exhausted == 70


def test_budget_forgets_traffic_that_left_the_window() -> None:
    budget = RetryBudget(0.5, 0.0, 10.0)
    for _ in range(100):
        budget.deposit_at(0.5)
    assert budget.withdraw_at(1.0)
    assert budget.window_requests == 100
    budget.deposit_at(30.0)                         # 30 s later: the old requests are gone
    assert budget.window_requests == 1 and budget.window_retries == 0
    assert not budget.withdraw_at(30.0)             # 0.5 * 1 < 1


def test_limit_grows_while_latency_holds_and_stops_at_the_ceiling() -> None:
    limit = ConcurrencyLimit(20, 4, 200, 1.5, 0.2)
    for _ in range(2000):
        limit.sample_py(0.005)
    assert limit.limit == 200


def test_limit_falls_when_latency_climbs_and_recovers_after() -> None:
    limit = ConcurrencyLimit(100, 4, 1000, 1.5, 0.2)
    for _ in range(700):
        limit.sample_py(0.005)
    before = limit.limit
    for _ in range(60):
        limit.sample_py(0.050)                      # ten times the usual latency: a brown-out
    during = limit.limit
    assert during < before / 4
    for _ in range(3000):
        limit.sample_py(0.005)
    assert limit.limit > during * 4
