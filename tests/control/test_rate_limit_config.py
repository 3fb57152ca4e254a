"""rate_limit on routes: what the loader accepts, its defaults, its errors (file, key, expected), the dump that reads
back, and explain showing a route's limit."""
from __future__ import annotations

import pytest

from fastmesh.admin.explain import Question, explain_offline
from fastmesh.config.load import config_from_dict, config_to_dict, loads_config
from fastmesh.config.schema import RateLimit
from fastmesh.errors import ConfigError

BASE = ('[[listeners]]\nname = "web"\nlisten = "127.0.0.1:8080"\nprotocol = "http"\ncluster = "echo"\n'
        '[[listeners.routes]]\npath_prefix = "/api/"\ncluster = "echo"\n')
CLUSTER = '[clusters.echo]\nendpoints = ["127.0.0.1:9001"]\n'
R = "listeners[0].routes[0].rate_limit"


def limited(table: str) -> str:
    return BASE + f"rate_limit = {table}\n" + CLUSTER


@pytest.mark.parametrize("table, want", [
    ('{ rate = "10/s", burst = 10, key = "client_ip" }', RateLimit(10, 1.0, 10, "client_ip", 4096)),
    ('{ rate = "100/m" }', RateLimit(100, 60.0, 100, "", 4096)),                # burst defaults to the count
    ('{ rate = "5/h", burst = 1, key = "header:X-User", buckets = 64 }', RateLimit(5, 3600.0, 1, "header:X-User", 64)),
    ('{ rate = "1/s", key = "filter" }', RateLimit(1, 1.0, 1, "filter", 4096)),
])
def test_accepted(table: str, want: RateLimit) -> None:
    cfg = loads_config(limited(table), "ok.toml")
    assert cfg.listeners[0].routes[0].rate_limit == want
    assert config_from_dict(config_to_dict(cfg)).listeners[0].routes[0].rate_limit == want


@pytest.mark.parametrize("table, message", [
    ('"10/s"', f'{R}: expected a table like {{ rate = "10/s", burst = 10, key = "client_ip" }}, got "10/s"'),
    ('{ burst = 3 }', f'{R}.rate: missing key (expected a rate like "10/s")'),
    ('{ rate = "10/d" }', f'{R}.rate: expected a rate like "10/s", "100/m" or "1000/h" (a whole number per second, '
                          'minute or hour), got "10/d"'),
    ('{ rate = "0/s" }', f'{R}.rate: expected a rate like "10/s", "100/m" or "1000/h" (a whole number per second, '
                         'minute or hour), got "0/s"'),
    ('{ rate = "10/s", burst = 0 }', f"{R}.burst: expected a whole number from 1 to 1000000, got 0"),
    ('{ rate = "10/s", key = "ip" }', f'{R}.key: expected "client_ip", "header:NAME" or "filter" (the key the '
                                      "route's filters set), got \"ip\""),
    ('{ rate = "10/s", buckets = 100 }', f"{R}.buckets: expected a power of two from 8 to 16777216, got 100"),
    ('{ rate = "10/s", brust = 3 }', f'{R}.brust: unknown key (did you mean "burst"?)'),
    ('{ rate = "1/h", burst = 1000000 }', f'{R}.burst: expected a burst that 1/h refills within 9 years, '
                                          'got 1000000'),
])
def test_errors_name_the_key(table: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(limited(table), "bad.toml")
    assert str(info.value) == f"bad.toml: {message}"


def test_explain_shows_the_routes_limit() -> None:
    cfg = loads_config(limited('{ rate = "10/s", burst = 20, key = "client_ip" }'), "ok.toml")
    out = explain_offline(cfg, Question(host="127.0.0.1:8080", target="/api/users"))
    assert out["rate_limit"] == {"limit": "10/s burst 20 by client_ip", "rate": 10, "per_seconds": 1.0,
                                 "burst": 20, "key": "client_ip", "buckets": 4096, "workers": 1}
    assert "rate_limit" not in explain_offline(cfg, Question(host="127.0.0.1:8080", target="/other"))
