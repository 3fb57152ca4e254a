"""GET /explain and `fastmesh explain` against a real `fastmesh run` (2 workers, HTTP backends this test starts,
one endpoint port nobody listens on): the route taken and why the earlier ones were not, a header route, endpoint
states with an ejected endpoint, the predicted pick, the budget, errors, and the CLI's table (also offline)."""
from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastmesh._testbase.http_backend import HttpBackend
from fastmesh._testbase.net import free_ports
from fastmesh._testbase.run import AsyncRun, env

pytestmark = pytest.mark.timeout(120)

WAIT = 15.0         # seconds any one expected event may take


def config(web: int, admin: int, a: str, b: str, dead: str) -> str:
    return f"""
workers = 2
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "web"
listen = "127.0.0.1:{web}"
protocol = "http"
cluster = "fallback"
[[listeners.routes]]
path_prefix = "/api"
headers = {{ x-env = "canary" }}
cluster = "canary"
[[listeners.routes]]
path_prefix = "/api"
cluster = "api"
[[listeners.routes]]
host = "*.example.com"
methods = ["POST"]
cluster = "posts"
[clusters.api]
endpoints = ["{a}", "{dead}"]
outlier = {{ consecutive_failures = 1, base_ejection = "60s" }}
timeout = "3s"
per_try_timeout = "1s"
retries = {{ attempts = 2, on = ["5xx"] }}
[clusters.canary]
endpoints = ["{b}"]
[clusters.posts]
endpoints = ["{a}", "{b}"]
balancer = "ring_hash"
hash_key = "header:x-user"
[clusters.fallback]
endpoints = ["{a}", "{b}"]
balancer = "ewma"
"""


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "fastmesh", "explain", *args, env=env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Running(AsyncRun):
    """A `fastmesh run` of this test; stop() ends it (and any worker left, by pid)."""

    async def start(self, ready: str = r"ready: 2 worker\(s\) serving") -> None:
        await super().start(ready)


def test_explain_routes_endpoints_and_cli(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = HttpBackend("a"), HttpBackend("b")
        await a.start()
        await b.start()
        web, admin, dead = free_ports(3)
        fm = Running(tmp_path, config(web, admin, a.address, b.address, f"127.0.0.1:{dead}"), WAIT)
        try:
            await fm.start()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=WAIT) as adm:
                await scenario(fm, adm, web, admin, a.address, b.address, f"127.0.0.1:{dead}")
        finally:
            await fm.stop()
            await a.stop()
            await b.stop()

    asyncio.run(main())


async def scenario(fm: Running, adm: httpx.AsyncClient, web: int, admin: int, a: str, b: str, dead: str) -> None:
    async def explain(**params: Any) -> dict[str, Any]:
        resp = await adm.get("/explain", params=params)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    # First match: /api without the canary header skips route 0 (and says why), takes route 1.
    got = await explain(host=f"shop:{web}", path="/api/users?id=7")
    assert got["listener"] == {"name": "web", "address": f"127.0.0.1:{web}", "protocol": "http",
                               "chosen_by": f"port {web}"}
    routes = got["routing"]["routes"]
    assert [r["result"] for r in routes] == ["no match", "matched", "not reached", "not reached"]
    assert routes[0]["reason"] == "header x-env: expected 'canary', got none"
    assert routes[0]["conditions"] == {"path_prefix": "/api", "headers": {"x-env": "canary"}}
    assert routes[3]["default"] and routes[3]["cluster"] == "fallback"
    assert got["routing"]["matched"] == 1 and got["routing"]["upstream_target"] == "/api/users?id=7"
    assert got["cluster"]["name"] == "api"
    policy = got["policy"]
    assert (policy["per_try_timeout"], policy["timeout"], policy["deadline"]) == (1.0, 3.0, 3.0)
    assert policy["retries"]["attempts"] == 2 and policy["retries"]["on"] == ["5xx"]
    assert policy["retries"]["budget_percent"] == 20.0
    assert policy["limits"]["scope"] == "instance" and policy["limits"]["workers"] >= 1

    # A header route, and a client deadline that is sooner than the cluster's timeout.
    got = await explain(host=f"shop:{web}", path="/api/users", header=["X-Env: canary", "fastmesh-timeout-ms: 500"])
    assert got["routing"]["matched"] == 0 and got["cluster"]["name"] == "canary"
    assert got["routing"]["routes"][0]["reason"] == "every condition holds"
    assert got["policy"]["client_deadline_ms"] == 500 and got["policy"]["deadline"] == 0.5

    # Non-matches with their reasons: the path, then the method of the host route.
    got = await explain(method="GET", host=f"www.example.com:{web}", path="/other")
    reasons = [r["reason"] for r in got["routing"]["routes"]]
    assert reasons[0] == reasons[1] == "path '/other' does not start with '/api'"
    assert reasons[2] == "method GET is not one of POST"
    assert got["routing"]["matched"] == 3 and got["cluster"]["name"] == "fallback"
    got = await explain(method="POST", host=f"api.example.com:{web}", path="/other", header="x-user: alice")
    assert got["routing"]["matched"] == 2 and got["cluster"]["name"] == "posts"
    pick = got["cluster"]["would_pick"]
    assert pick["keyed"] and pick["how"] == "ring_hash on header x-user" and pick["endpoint"] in (a, b)
    assert pick["shares"] == {pick["endpoint"]: 1.0} and "prediction" in pick["note"]
    got = await explain(method="POST", host=f"example.com:{web}", path="/other")
    assert got["routing"]["routes"][2]["reason"] == "host 'example.com' is not a subdomain of 'example.com'"

    # Traffic until the dead endpoint of "api" is ejected: it shows down/ejected, with when the ejection ends.
    async with httpx.AsyncClient(timeout=WAIT) as http:
        deadline = time.monotonic() + WAIT
        while True:
            for _ in range(4):                                  # new connections: both workers take some
                resp = await http.get(f"http://127.0.0.1:{web}/api/x", headers={"connection": "close"})
                assert resp.status_code == 200                  # the failed connect is tried on the live endpoint
                assert (await http.get(f"http://127.0.0.1:{web}/plain")).status_code == 200
            got = await explain(host=f"shop:{web}", path="/api/x")
            eps = {e["address"]: e for e in got["cluster"]["endpoints"]}
            if eps[dead]["ejected_for"] is not None and eps[dead]["state"] != "up":
                break
            assert time.monotonic() < deadline, got["cluster"]
    assert eps[dead]["state"] in ("down", "ejected") and not eps[dead]["eligible"]
    assert 1.0 < eps[dead]["ejected_for"] <= 72.0
    assert eps[a]["state"] == "up" and eps[a]["eligible"] and eps[a]["ejected_for"] is None
    assert eps[a]["connections"] >= 1 and set(eps[a]["workers"]) == {"0", "1"}
    pick = got["cluster"]["would_pick"]
    assert pick["endpoint"] == a and pick["shares"] == {a: 1.0} and not pick["keyed"]
    assert got["view"] == "the supervisor's, merged over 2 worker(s)"

    # ewma exposes its latency estimates (the mean over the workers that have one).
    got = await explain(host=f"shop:{web}", path="/plain")
    assert got["cluster"]["name"] == "fallback"
    assert all(e["latency_ms"] is not None and e["latency_ms"] > 0 for e in got["cluster"]["endpoints"])

    # Errors: JSON with a status and a message.
    for params, status, words in (({"port": "1"}, 404, "no listener on port 1"),
                                  ({"listener": "nope"}, 404, "no listener named 'nope'"),
                                  ({"colour": "red"}, 400, "unknown parameter 'colour'"),
                                  ({"port": str(web), "method": "G E T"}, 400, "not an HTTP token"),
                                  ({"port": str(web), "path": "nope"}, 400, "starting with /")):
        resp = await adm.get("/explain", params=params)
        assert resp.status_code == status and words in resp.json()["message"], resp.text

    # The CLI: a table from the admin server (by address and by config file), JSON, and offline from the config.
    url = f"http://shop:{web}/api/x"
    for where in (["--admin", f"127.0.0.1:{admin}"], [str(fm.config)]):
        code, out, err = await cli(url, "-H", "x-env: prod", *where)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("request   GET /api/x  host shop:")
        assert lines[1] == f"listener  web (http on 127.0.0.1:{web}), chosen by port {web}"
        header = next(i for i, line in enumerate(lines) if line.split() == ["#", "CLUSTER", "CONDITIONS", "RESULT"])
        assert lines[header + 1].split()[:2] == ["0", "canary"]
        assert "no match: header x-env: expected 'canary', got 'prod'" in lines[header + 1]
        assert lines[header + 2].split()[:2] == ["1", "api"] and lines[header + 2].endswith("matched")
        dead_row = next(line for line in lines if line.strip().startswith(dead))
        assert re.search(r"ejected for \d+\.\d+s more", dead_row), dead_row
        assert f"would pick {a} most likely (round_robin; shares over 1000 picks: {a} 100%)" in out
        assert "budget    connect 1s x 3 endpoints; per try 1s (per_try_timeout); total 3s" in out
        assert re.search(r"^limits    \d+ requests in flight, \d+ connections \((queue \d+|no queue)\), \d+ retries "
                         r"in flight; for the instance( \([2-9]\d* workers count together\))?$", out, re.MULTILINE), out
    code, out, err = await cli(url, "--json", "--admin", f"127.0.0.1:{admin}")
    assert code == 0 and json.loads(out)["cluster"]["name"] == "api"
    code, out, err = await cli("http://shop/x", "--admin", f"127.0.0.1:{admin}")
    assert code == 1 and "no listener on port 80" in err
    offline = fm.config.with_name("offline.toml")
    offline.write_text(fm.config.read_text().replace(f"127.0.0.1:{admin}", f"127.0.0.1:{free_ports(1)[0]}"))
    code, out, err = await cli(url, str(offline))
    assert code == 0, err
    assert "view      the config only (no running instance answered)" in out
    assert re.search(rf"^  {re.escape(dead)}\s+1\s+unknown", out, re.MULTILINE), out
