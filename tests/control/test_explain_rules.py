"""Explain applies the proxy's own request rules (from the core, not copies): the cookie a consistent-hash key is
read from, which fastmesh-timeout-ms values count, which methods a failed try may replay. Checked against an
in-process proxy routing real requests to backends this test starts."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from fastmesh import Proxy, loads_config
from fastmesh._core.exchange import REPLAYABLE_METHODS
from fastmesh._testbase.http_backend import start_http_backends
from fastmesh._testbase.inproc import no_connection_left, web_config
from fastmesh.admin.explain import Question, explain_offline, policy, request_key

pytestmark = pytest.mark.timeout(60)

COOKIES = [
    "session=alice",
    "session=alice ; theme=dark",       # the space before ";" is part of the value the proxy hashes
    "theme=dark;  session=bob",
    "session=bob  ;x=1",
    "session= carol",
    "session=carol",
    "session=dave\t; y=2",
    "Session=erin; session=frank",      # cookie names are case-sensitive
]


def test_explain_predicts_the_endpoint_the_proxy_picks_by_cookie() -> None:
    async def main() -> None:
        backends = await start_http_backends(3, "cookie")
        text = web_config([b.address for b in backends],
                          cluster='balancer = "ring_hash"\nhash_key = "cookie:session"')
        cfg = loads_config(text)
        names = {b.address: b.name for b in backends}
        try:
            async with Proxy(cfg) as proxy:
                host, port = proxy.addresses["web"]
                async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as client:
                    for cookie in COOKIES:
                        q = Question(host=f"{host}:{port}", target="/echo", headers=[("Cookie", cookie)])
                        pick = explain_offline(cfg, q)["cluster"]["would_pick"]
                        assert pick["keyed"], cookie
                        answer = await client.get("/echo", headers={"Cookie": cookie})
                        assert answer.status_code == 200
                        assert answer.headers["x-backend"] == names[pick["endpoint"]], cookie
                await no_connection_left(proxy)
        finally:
            for b in backends:
                await b.stop()

    asyncio.run(main())


def test_explain_reads_keys_deadlines_and_replays_as_the_proxy_does() -> None:
    cfg = loads_config(web_config(["127.0.0.1:1", "127.0.0.1:2"],
                                  cluster='balancer = "ring_hash"\nhash_key = "cookie:s"\ntimeout = "3s"'))
    cluster, listener = cfg.clusters["web"], cfg.listeners[0]

    def key(cookie: str) -> bytes | None:
        return request_key(cluster, Question(headers=[("Cookie", cookie)]))[0]

    assert key("s=1 ; t=2") == b"1 " and key("t=2;s=3") == b"3" and key("S=1") is None and key("s=") == b""

    def client_deadline(value: str) -> tuple[object, float | None]:
        p = policy(listener, cluster, Question(headers=[("fastmesh-timeout-ms", value)]))
        return p["client_deadline_ms"], p["deadline"]

    assert client_deadline("500") == (500, 0.5)
    assert client_deadline("999999999999") == (999999999999, 3.0)         # 12 digits: taken, the timeout is sooner
    for ignored in ("1234567890123", "\uff15\uff10\uff10", "+500", "5e2", ""):     # what the proxy does not honour
        got, deadline = client_deadline(ignored)
        assert isinstance(got, str) and got.startswith("ignored") and deadline == 3.0, ignored

    for method in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH", "CONNECT", "PURGE"):
        p = policy(listener, cluster, Question(method=method))
        assert p["retryable_method"] is (method in REPLAYABLE_METHODS)
    assert set(REPLAYABLE_METHODS) == {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}


def test_explain_shows_the_cluster_protocol_and_grpc_retries() -> None:
    from fastmesh.cli.explain import render
    from fastmesh.dataplane.stats import Snapshot, StatsLayout

    cfg = loads_config(web_config(["127.0.0.1:9"], cluster='protocol = "h2"\n'
                                  'retries = { attempts = 2, on = ["reset"], grpc_status = ["unavailable", 8] }'))
    out = explain_offline(cfg, Question(method="POST", host="grpc", target="/echo.Echo/Unary", listener="web"))
    assert out["cluster"]["protocol"] == "h2"
    assert out["policy"]["retries"]["grpc_status"] == ["resource_exhausted", "unavailable"]
    text = render(out)
    assert "cluster   web (round_robin; HTTP/2 to the endpoints)" in text
    assert "2 attempts on reset, grpc-status resource_exhausted, grpc-status unavailable;" in text
    # /clusters (the stats snapshot) says how each cluster is spoken to.
    layout = StatsLayout(cfg)
    assert Snapshot.of_block(layout, layout.new_block()).clusters()["web"]["protocol"] == "h2"
    plain = loads_config(web_config(["127.0.0.1:9"]))
    assert "HTTP/1.1 to the endpoints" in render(explain_offline(plain, Question(host="h", listener="web")))
