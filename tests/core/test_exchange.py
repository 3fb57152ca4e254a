"""The exchange without sockets: a fake codec plays the HTTP/1 connection's part (it feeds request views and try
outcomes, then renders the verdicts) on a fake clock, so retries, the budget, deadlines, breakers, hash keys,
header edits and the error answers are checked as rules, whatever the protocol that will carry them."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest

from fastmesh._core import errors
from fastmesh._core.balance.factory import make_balancer
from fastmesh._core.balance.hashing import hash_key
from fastmesh._core.cluster import Cluster
from fastmesh._core.exchange import (
    ANSWER, PASS, REPLAYABLE_METHODS, RETRY, Exchange, cookie_in, grpc_timeout_ms, timeout_ms,
)
from fastmesh._core.http1.pool import HttpPool
from fastmesh._core.http1.render import error_answer, forwarded_head
from fastmesh._core.policy import ClusterPolicy
from fastmesh._core.reactor import Reactor
from fastmesh._core.router import Router

T0 = 1000.0
ERR = {e["name"]: i for i, e in enumerate(errors.table(), start=1)}


def head(target: bytes = b"/", *lines: bytes, method: bytes = b"GET") -> bytes:
    return b"\r\n".join([method + b" " + target + b" HTTP/1.1", b"Host: example.com", *lines]) + b"\r\n\r\n"


@dataclass
class Clock:
    now: float = T0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Answer:
    status: int
    cause: str | None                  # fastmesh-error of an answer of the proxy's own, None for the upstream's
    tries: int
    endpoints: list[int] = field(default_factory=list)


class FakeCodec:
    """What http1/conn.pyx does around an exchange, minus the bytes: start, pick, connect, report, retry."""

    def __init__(self, n: int = 3, hash_key_spec: str | None = None, balancer: str = "round_robin",
                 **policy: object) -> None:
        endpoints = [(socket.AF_INET, "127.0.0.1", 9000 + i) for i in range(n)]
        self.cluster = Cluster("web", endpoints, make_balancer(balancer, [1] * n, seed=7))
        self.policy = ClusterPolicy(**policy)
        self.pool = HttpPool(Reactor(), self.cluster, policy=self.policy, hash_key=hash_key_spec)
        self.router = Router([{"path_prefix": "/api/", "cluster": "web", "add_request_headers": {"X-Route": "api"},
                               "remove_request_headers": ["X-Secret"], "add_response_headers": {"X-Via-Route": "1"}}],
                             ["web"])
        self.clock = Clock()

    def start(self, raw: bytes = b"", **options: object) -> tuple[Exchange, int]:
        ex = Exchange()
        return ex, ex.start(self.router, [self.pool], raw or head(b"/api/x"), self.clock.now, **options)

    def request(self, outcomes: list[int | str], raw: bytes = b"", latency: float = 0.01,
                **options: object) -> Answer:
        """Run one request whose tries end as `outcomes` say: a status, "reset" or "timeout"."""
        ex, err = self.start(raw, **options)
        if err:
            ex.finish()
            return Answer(errors.describe(err)["status"], errors.describe(err)["cause"], ex.tries)
        seen = []
        try:
            for outcome in outcomes:
                ep = ex.pick()
                seen.append(ep)
                ex.connected_at(ep, self.clock.now)
                if outcome == "timeout":
                    self.clock.now = ex.try_deadline
                    verdict = ex.on_try_failed(ep, "timeout", self.clock.now)
                elif outcome == "reset":
                    verdict = ex.on_try_failed(ep, "reset", self.clock.advance(latency))
                else:
                    verdict = ex.on_response(ep, int(outcome), self.clock.advance(latency))
                if verdict == RETRY:
                    self.clock.advance(ex.backoff)
                    ex.on_retry_due(self.clock.now)
                    continue
                if verdict == ANSWER:
                    e = errors.describe(ex.error)
                    return Answer(e["status"], e["cause"], ex.tries, seen)
                assert verdict == PASS
                return Answer(int(outcome), None, ex.tries, seen)
            raise AssertionError("the exchange wanted more tries than the script has")
        finally:
            ex.finish()


# ---- retries -----------------------------------------------------------------------------------------------------

def test_a_5xx_is_retried_on_another_endpoint_until_an_answer() -> None:
    codec = FakeCodec(attempts=3, on=("5xx",))
    got = codec.request([503, 502, 200])
    assert (got.status, got.tries) == (200, 3)
    assert len(set(got.endpoints)) == 3               # each retry avoided the endpoints already tried
    assert codec.policy.retried == 2 and codec.policy.retries_active == 0 and codec.policy.requests_active == 0


def test_attempts_bound_the_tries_and_the_last_answer_passes_on() -> None:
    codec = FakeCodec(attempts=2, on=("5xx",))
    got = codec.request([503, 503])
    assert (got.status, got.cause, got.tries) == (503, None, 2)


def test_resets_and_timeouts_retry_only_when_listed() -> None:
    assert FakeCodec(attempts=2, on=("5xx",)).request(["reset"]).cause == "reset"
    assert FakeCodec(attempts=2, on=("reset",)).request(["reset", 200]).status == 200
    assert FakeCodec(attempts=2, on=("reset",), per_try_timeout=0.5).request(["timeout"]).cause == "response timeout"
    assert FakeCodec(attempts=2, on=("timeout",), per_try_timeout=0.5).request(["timeout", 200]).tries == 2


def test_a_marked_answer_is_never_retried_again() -> None:
    codec = FakeCodec(attempts=3, on=("5xx",))
    ex, err = codec.start()
    assert err == 0
    assert ex.on_response(ex.pick(), 503, T0 + 0.01, marked=True) == PASS
    assert ex.retried_value(503, marked=True) == -1     # its own mark stays, none added
    assert ex.retried_value(503) == 0 and ex.retried_value(200) == -1
    ex.finish()


def test_only_replayable_requests_are_sent_again() -> None:
    assert set(REPLAYABLE_METHODS) == {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"}
    codec = FakeCodec(attempts=3, on=("5xx", "reset"))
    assert codec.request([503], raw=head(b"/api/x", method=b"POST")).tries == 1
    assert codec.request(["reset"], replayable=False).cause == "reset"    # its body is no longer whole here


def test_the_budget_refuses_retries_beyond_its_share() -> None:
    codec = FakeCodec(attempts=3, on=("5xx",), budget_percent=0.5, budget_min_per_second=0.0)
    statuses = [codec.request([503, 200]).tries for _ in range(8)]
    # Each request deposits one; a retry needs (retries + 1) <= 0.5 x requests: every other request retries.
    assert statuses == [1, 2, 1, 2, 1, 2, 1, 2]
    assert codec.policy.budget.exhausted == 4


def test_max_retries_caps_retries_in_flight() -> None:
    codec = FakeCodec(attempts=3, on=("5xx",), max_retries=1)
    first, _ = codec.start()
    assert first.on_response(first.pick(), 503, T0) == RETRY        # one retry in flight now
    second, _ = codec.start()
    assert second.on_response(second.pick(), 503, T0) == PASS       # the cap refuses a second
    assert codec.policy.overloaded == 1
    first.finish()
    second.finish()
    assert codec.policy.retries_active == 0


def test_backoff_is_jittered_below_the_doubling_cap() -> None:
    codec = FakeCodec(attempts=5, on=("5xx",), backoff_base=0.1, backoff_max=0.25)
    ex, _ = codec.start()
    waits = []
    for _ in range(4):
        assert ex.on_response(ex.pick(), 503, codec.clock.now) == RETRY
        waits.append(ex.backoff)
    assert 0 <= waits[0] < 0.1 and 0 <= waits[1] < 0.2 and all(0 <= w < 0.25 for w in waits[2:])
    ex.finish()


# ---- deadlines ---------------------------------------------------------------------------------------------------

def test_the_client_deadline_wins_when_sooner_and_trusted() -> None:
    codec = FakeCodec(timeout=2.0, per_try_timeout=5.0)
    ex, _ = codec.start(head(b"/api/x", b"fastmesh-timeout-ms: 300"))
    assert ex.deadline == pytest.approx(T0 + 0.3) and ex.try_deadline == pytest.approx(T0 + 0.3)
    assert 198 <= ex.budget_ms_at(T0 + 0.1) <= 199   # what is left (truncated to ms), less 1 ms for the hop
    assert ex.budget_ms_at(T0 + 0.3) == 0 and ex.budget_ms_at(T0 - 1e6) == 999999999
    ex.finish()
    ex, _ = codec.start(head(b"/api/x", b"fastmesh-timeout-ms: 300"), trust_headers=False)
    assert ex.deadline == pytest.approx(T0 + 2.0)
    ex.finish()
    ex, _ = codec.start(head(b"/api/x", b"fastmesh-timeout-ms: 3s"))
    assert ex.deadline == pytest.approx(T0 + 2.0)     # not digits: ignored
    ex.finish()


def test_grpc_timeout_is_the_same_deadline_as_fastmesh_timeout_ms() -> None:
    codec = FakeCodec(timeout=2.0, per_try_timeout=5.0)
    for value, seconds in ((b"300m", 0.3), (b"1S", 1.0), (b"250000u", 0.25), (b"1n", 0.001), (b"1H", 2.0)):
        ex, _ = codec.start(head(b"/api/x", b"grpc-timeout: " + value))
        assert ex.deadline == pytest.approx(T0 + seconds), value
        ex.finish()
    ex, _ = codec.start(head(b"/api/x", b"grpc-timeout: 900m", b"fastmesh-timeout-ms: 400"))
    assert ex.deadline == pytest.approx(T0 + 0.4)     # the sooner of the two
    ex.finish()
    ex, _ = codec.start(head(b"/api/x", b"grpc-timeout: 300m"), trust_headers=False)
    assert ex.deadline == pytest.approx(T0 + 2.0)
    ex.finish()
    assert [grpc_timeout_ms(v) for v in (b"12345678m", b"123456789m", b"5", b"5x", b"m", b"-1m")] == \
        [12345678, -1, -1, -1, -1, -1]


def test_a_try_cut_by_the_deadline_is_deadline_exceeded_not_a_response_timeout() -> None:
    codec = FakeCodec(timeout=0.5, per_try_timeout=5.0, attempts=3, on=("timeout",))
    got = codec.request(["timeout"])
    assert (got.status, got.cause, got.tries) == (504, "deadline exceeded", 1)
    codec = FakeCodec(timeout=5.0, per_try_timeout=0.5)
    assert codec.request(["timeout"]).cause == "response timeout"


def test_a_spent_deadline_is_refused_before_any_try() -> None:
    codec = FakeCodec()
    got = codec.request([], raw=head(b"/api/x", b"fastmesh-timeout-ms: 0"))
    assert (got.status, got.cause) == (504, "deadline exceeded")
    assert codec.policy.requests_active == 0


def test_explain_reads_the_same_deadline_values() -> None:
    assert timeout_ms(b"250") == 250 and timeout_ms(b"999999999999") == 999999999999
    for ignored in (b"", b"3s", b"+5", b"1234567890123", b" 5"):
        assert timeout_ms(ignored) == -1, ignored


# ---- breakers ----------------------------------------------------------------------------------------------------

def test_max_requests_refuses_with_overloaded_until_one_ends() -> None:
    codec = FakeCodec(max_requests=1)
    first, err = codec.start()
    assert err == 0 and codec.policy.requests_active == 1
    second, err = codec.start()
    assert err == ERR["overloaded"] and codec.policy.overloaded == 1
    second.finish()
    first.finish()
    third, err = codec.start()
    assert err == 0
    third.finish()
    assert codec.policy.requests_active == 0


def test_waiting_a_whole_try_for_a_slot_is_overloaded() -> None:
    codec = FakeCodec()
    ex, _ = codec.start()
    assert ex.on_wait_expired() == ERR["overloaded"] and codec.policy.overloaded == 1
    ex.finish()


# ---- routing, keys and edits -------------------------------------------------------------------------------------

def test_no_route_is_404() -> None:
    got = FakeCodec().request([], raw=head(b"/other"))
    assert (got.status, got.cause) == (404, "no route")


@pytest.mark.parametrize("spec, lines, peer, key", [
    ("header:X-User", [b"x-user: alice"], "127.0.0.1", b"alice"),
    ("cookie:sid", [b"Cookie: a=1; sid=s-42; b=2"], "127.0.0.1", b"s-42"),
    ("source_ip", [], "10.1.2.3", b"10.1.2.3"),
    ("header:X-User", [], "127.0.0.1", None),
])
def test_hash_keys_come_from_the_view(spec: str, lines: list[bytes], peer: str, key: bytes | None) -> None:
    codec = FakeCodec(hash_key_spec=spec, balancer="ring_hash")
    raw = head(b"/api/x", *lines)
    ex, _ = codec.start(raw, peer=peer)
    assert ex.hash_key == (hash_key(key) if key is not None else None)
    if spec.startswith("cookie:"):
        assert cookie_in(lines[0][len(b"Cookie: "):], b"sid") == key      # explain reads the same bytes
    ex.finish()


def test_edits_render_into_the_forwarded_head() -> None:
    codec = FakeCodec(timeout=1.0)
    raw = head(b"/api/x?q=1", b"X-SECRET: s", b"x-secrets: kept", b"X-Forwarded-Proto: https",
               b"fastmesh-timeout-ms: 5000", b"Connection: keep-alive")
    ex, _ = codec.start(raw, peer="10.0.0.7")
    request_edits, response_edits = ex.edits()
    kinds = [kind for kind, _, _ in request_edits]
    # XFP dropped, XFF, XFP, Via, the request id, the deadline, the route's (no identity field: nothing to remove)
    assert kinds == ["remove", "add", "add", "add", "add_absent", "deadline", "remove", "add"]
    assert response_edits == [("add", b"Via", b"1.1 fastmesh"), ("add", b"X-Via-Route", b"1")]
    out = forwarded_head(ex, raw, budget_ms=42).split(b"\r\n")
    assert out[0] == b"GET /api/x?q=1 HTTP/1.1"
    assert b"x-secrets: kept" in out and not any(line.lower().startswith(b"x-secret:") for line in out)
    assert b"X-Forwarded-Proto: http" in out and b"X-Forwarded-Proto: https" not in out
    assert b"X-Forwarded-For: 10.0.0.7" in out and b"Via: 1.1 fastmesh" in out and b"X-Route: api" in out
    assert b"fastmesh-timeout-ms: 000000042" in out and b"fastmesh-timeout-ms: 5000" not in out
    assert not any(line.startswith(b"Connection") for line in out)
    (rid,) = [line for line in out if line.startswith(b"x-request-id: ")]
    assert len(rid) == len(b"x-request-id: ") + 32
    ex.finish()
    ex, _ = codec.start(head(b"/api/x", b"X-Request-Id: mine"), forwarded=False)
    out = forwarded_head(ex, head(b"/api/x", b"X-Request-Id: mine"))
    assert out.count(b"equest-") == 1 and b"X-Forwarded-For" not in out and b"Via" not in out
    ex.finish()


@pytest.mark.parametrize("lines, dropped", [
    ([b"Connection: keep-alive", b"Close: 1", b"X-A: 2"], []),
    ([b"Connection: close", b"Close: 1", b"X-A: 2"], [b"Close: 1"]),
    ([b"Connection: keep-alive x-a", b"Close: 1", b"X-A: 2"], [b"X-A: 2"]),
    ([b"Connection: keep-alive", b"connection: X-A,upgrade", b"Close: 1", b"X-A: 2"], [b"X-A: 2"]),
])
def test_fields_the_connection_field_names_are_dropped(lines: list[bytes], dropped: list[bytes]) -> None:
    """Connection's tokens are collected only when it lists more than keep-alive / upgrade; whatever it names
    is dropped, a field called "close" included, and nothing else."""
    codec = FakeCodec()
    raw = head(b"/api/x", *lines)
    ex, _ = codec.start(raw, forwarded=False)
    out = forwarded_head(ex, raw).split(b"\r\n")
    assert not any(line.lower().startswith(b"connection") for line in out)
    for line in (b"Close: 1", b"X-A: 2"):
        assert (line not in out) == (line in dropped)
    ex.finish()


@pytest.mark.parametrize("ms", [0, 7, 42, 100, 1000, 123456789, 987654321, 999999999])
def test_the_deadline_is_stamped_as_nine_digits(ms: int) -> None:
    """stamp_budget writes two digits per step: every width and every digit pair comes out zero-padded."""
    codec = FakeCodec(timeout=1.0)
    raw = head(b"/api/x")
    ex, _ = codec.start(raw)
    out = forwarded_head(ex, raw, budget_ms=ms).split(b"\r\n")
    assert b"fastmesh-timeout-ms: %09d" % ms in out
    ex.finish()


def test_forwarded_lines_end_in_one_crlf_with_or_without_trailing_whitespace() -> None:
    """A field line goes out in one copy with its received CRLF; one whose value had trailing OWS goes out trimmed,
    with a CRLF of ours."""
    codec = FakeCodec()
    raw = head(b"/api/x", b"X-Trail: v \t ", b"X-Plain: w", b"X-Empty:", b"X-Last: z")
    ex, _ = codec.start(raw, forwarded=False)
    out = forwarded_head(ex, raw)
    assert b"\r\nX-Trail: v\r\nX-Plain: w\r\nX-Empty:\r\nX-Last: z\r\n" in out
    ex.finish()


@pytest.mark.parametrize("sent, value", [(b"0", 0), (b"7", 7), (b"10", 10), (b"99", 99), (b"100", 100),
                                         (b"000123", 123), (b"12345", 12345),
                                         (b"999999999999999999", 999999999999999999)])
def test_content_length_is_forwarded_in_plain_digits(sent: bytes, value: int) -> None:
    """_content_length writes two digits per step: odd and even widths, zeros inside, the parser's largest value."""
    codec = FakeCodec()
    raw = head(b"/api/x", b"Content-Length: " + sent)
    ex, _ = codec.start(raw, forwarded=False)
    out = forwarded_head(ex, raw).split(b"\r\n")
    assert [line for line in out if line.lower().startswith(b"content-length")] == [b"Content-Length: %d" % value]
    ex.finish()


def _xorshift64star(state: int) -> tuple[int, int]:
    """balance/base.pxd's rng_next in Python: (new state, value)."""
    mask = (1 << 64) - 1
    state ^= state >> 12
    state = (state ^ (state << 25)) & mask
    state ^= state >> 27
    return state, (state * 0x2545F4914F6CDD1D) & mask


@pytest.mark.parametrize("seed", [1, 7, 0x0123456789ABCDEF, (1 << 64) - 1, 0xF0F0F0F00A0A0A0A])
def test_request_id_is_two_draws_as_little_endian_hex(seed: int) -> None:
    """The request id is the balancer's next two random words, each as its 8 bytes (lowest first) in lowercase hex:
    the digits are computed with word operations, and must stay the text a digit-pair table gives."""
    codec = FakeCodec()
    codec.cluster.balancer.reseed(seed)
    state, first = _xorshift64star(seed)
    _, second = _xorshift64star(state)
    raw = head(b"/api/x")
    ex, _ = codec.start(raw)
    out = forwarded_head(ex, raw).split(b"\r\n")
    (rid,) = [line for line in out if line.startswith(b"x-request-id: ")]
    assert rid[len(b"x-request-id: "):] == (first.to_bytes(8, "little") + second.to_bytes(8, "little")).hex().encode()
    ex.finish()


def test_a_client_identity_field_costs_an_edit_only_when_the_request_has_one() -> None:
    """The parser notes fastmesh-client-identity (any case), so its removal is listed only for a request that
    carries one; an identity header of another name is always removed; "" turns both off."""
    codec = FakeCodec()
    for lines, name, listed in (([], "fastmesh-client-identity", False),
                                ([b"FastMesh-Client-Identity: spiffe://evil/x"], "fastmesh-client-identity", True),
                                ([b"x-peer-id: spiffe://evil/x"], "x-peer-id", True),
                                ([], "x-peer-id", True),
                                ([b"fastmesh-client-identity: spiffe://evil/x"], "", False)):
        raw = head(b"/api/x", *lines)
        ex, err = codec.start(raw, identity_header=name)
        assert err == 0
        removed = [n for kind, n, _ in ex.edits()[0] if kind == "remove" and name and n == name.encode()]
        assert removed == ([name.encode()] if listed else [])
        out = forwarded_head(ex, raw)
        assert (b"spiffe://evil/x" in out) == (name == ""), (lines, name)
        ex.finish()


def test_client_identity_is_set_by_the_exchange_only_and_routes_may_require_one() -> None:
    """A verified identity becomes fastmesh-client-identity (a client's own copy is removed either way), a TLS
    listener forwards X-Forwarded-Proto: https, and a route with allow_identities refuses others with 403."""
    codec = FakeCodec()
    raw = head(b"/api/x", b"fastmesh-client-identity: spiffe://evil/sa/x")
    ex, err = codec.start(raw, identity="spiffe://td/ns/web/sa/a", https=True)
    out = forwarded_head(ex, raw).split(b"\r\n")
    assert err == 0
    assert [line for line in out if line.lower().startswith(b"fastmesh-client-identity")] == \
        [b"fastmesh-client-identity: spiffe://td/ns/web/sa/a"]
    assert b"X-Forwarded-Proto: https" in out
    ex.finish()
    ex, err = codec.start(raw)
    out = forwarded_head(ex, raw).split(b"\r\n")
    assert not any(line.lower().startswith(b"fastmesh-client-identity") for line in out)
    ex.finish()
    router = Router([{"path_prefix": "/api/", "cluster": "web", "allow_identities": ["spiffe://td/ns/web/*"]},
                     {"path_prefix": "/", "cluster": "web", "allow_identities": ["spiffe://td/ns/db/sa/x"]}], ["web"])
    assert router.allows(0, "spiffe://td/ns/web/sa/a") and not router.allows(0, "spiffe://td/ns/webx/sa/a")
    assert router.allows(1, "spiffe://td/ns/db/sa/x") and not router.allows(1, "spiffe://td/ns/db/sa/y")
    assert not router.allows(0, None)
    for identity, expected in (("spiffe://td/ns/web/sa/a", 0), ("spiffe://td/ns/db/sa/x", ERR["forbidden"]),
                               (None, ERR["forbidden"])):
        ex = Exchange()
        assert ex.start(router, [codec.pool], head(b"/api/x"), 0.0, identity=identity) == expected
        ex.finish()
    assert errors.describe(ERR["forbidden"]) == {"name": "forbidden", "status": 403, "reason": "Forbidden",
                                                 "cause": "forbidden", "rst_code": 0x7, "grpc_status": 7}


# ---- errors as values ----------------------------------------------------------------------------------------------

def test_every_proxy_error_maps_to_one_answer_for_each_protocol() -> None:
    table = {e["name"]: (e["status"], e["cause"], e["rst_code"], e["grpc_status"]) for e in errors.table()}
    assert table["connect_refused"] == (503, "connect refused", 0x7, 14)      # REFUSED_STREAM, UNAVAILABLE
    assert table["deadline_exceeded"] == (504, "deadline exceeded", 0x8, 4)   # CANCEL, DEADLINE_EXCEEDED
    assert table["no_route"][:2] == (404, "no route") and table["reset"][:2] == (502, "reset")
    assert len(set(e["cause"] for e in errors.table())) == len(errors.table())   # every cause says which
    assert errors.describe(errors.connect_error_of(111))["cause"] == "connect refused"
    assert errors.describe(errors.connect_error_of(0))["cause"] == "connect timeout"
    assert errors.describe(errors.connect_error_of(113))["cause"] == "connect failed"


def test_the_http1_codec_renders_an_error_value() -> None:
    answer = error_answer(ERR["overloaded"], keep=False, retried=0)
    head_part, body = answer.split(b"\r\n\r\n")
    assert head_part.split(b"\r\n")[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"fastmesh-error: overloaded" in head_part and b"connection: close" in head_part
    assert b"fastmesh-retried: 0" in head_part and body == b"Service Unavailable: overloaded\n"
    assert error_answer(ERR["overloaded"], head_only=True).endswith(b"\r\n\r\n")
    assert error_answer(ERR["bad_request"], code=-14).startswith(b"HTTP/1.1 431 ")   # the parse code's status


# ---- gRPC: retries by grpc-status ---------------------------------------------------------------------------------

GRPC_HEAD = head(b"/api/echo.Echo/Unary", b"content-type: application/grpc", b"te: trailers", method=b"POST")


def grpc_call(codec: FakeCodec, codes: list[int], **options: object) -> tuple[list[int], list[int], int]:
    """One POST whose tries answer trailers-only with these grpc-status codes: (verdicts, endpoints, tries)."""
    ex, err = codec.start(GRPC_HEAD, **options)
    assert err == 0
    verdicts, seen = [], []
    try:
        for code in codes:
            ep = ex.pick()
            seen.append(ep)
            ex.connected_at(ep, codec.clock.now)
            verdict = ex.on_response(ep, 200, codec.clock.advance(0.01), grpc_status=code)
            verdicts.append(verdict)
            if verdict != RETRY:
                break
            codec.clock.advance(ex.backoff)
            ex.on_retry_due(codec.clock.now)
        return verdicts, seen, ex.tries
    finally:
        ex.finish()


def test_a_listed_grpc_status_is_retried_on_another_endpoint_though_the_method_is_post() -> None:
    codec = FakeCodec(attempts=3, on=("5xx",), grpc_status=(14,))
    verdicts, seen, tries = grpc_call(codec, [14, 0])
    assert verdicts == [RETRY, PASS] and tries == 2 and seen[0] != seen[1]
    assert codec.policy.retried == 1 and codec.policy.retries_active == 0
    # The last try's status passes on when the attempts are spent.
    verdicts, _, tries = grpc_call(codec, [14, 14, 14])
    assert verdicts == [RETRY, RETRY, PASS] and tries == 3


def test_grpc_statuses_not_listed_and_5xx_rules_do_not_retry_grpc_answers() -> None:
    # "5xx" is about HTTP statuses: a trailers-only UNAVAILABLE is an HTTP 200.
    assert grpc_call(FakeCodec(attempts=3, on=("5xx", "reset")), [14])[0] == [PASS]
    assert grpc_call(FakeCodec(attempts=3, grpc_status=(14,)), [13])[0] == [PASS]
    assert grpc_call(FakeCodec(attempts=3, grpc_status=(14,)), [0])[0] == [PASS]


def test_a_call_whose_body_cannot_be_sent_again_is_not_retried() -> None:
    # A streaming call after a message went upstream (more may follow): the codec says it is not replayable.
    assert grpc_call(FakeCodec(attempts=3, grpc_status=(14,)), [14], replayable=False)[0] == [PASS]


def test_grpc_retries_draw_on_the_same_budget_and_max_retries() -> None:
    codec = FakeCodec(attempts=3, grpc_status=(14,), budget_percent=0.0, budget_min_per_second=0.0)
    assert grpc_call(codec, [14])[0] == [PASS]
    assert codec.policy.budget.exhausted == 1
    codec = FakeCodec(attempts=3, grpc_status=(14,), max_retries=0)
    assert grpc_call(codec, [14])[0] == [PASS] and codec.policy.overloaded == 1


def test_a_grpc_failure_counts_against_the_endpoint() -> None:
    codec = FakeCodec(n=1, attempts=1, grpc_status=(14,))
    codec.cluster.set_outlier(True, 2, 5.0, 300.0, 100)
    for _ in range(2):
        grpc_call(codec, [14])
    assert codec.cluster.endpoints()[0]["state"] == "ejected"


def test_grpc_status_values() -> None:
    from fastmesh._core.exchange import grpc_status_of
    assert [grpc_status_of(v) for v in (b"0", b"14", b"16", b"99")] == [0, 14, 16, 99]
    assert [grpc_status_of(v) for v in (b"", b"x", b"-1", b"100", b" 1")] == [2, 2, 2, 2, 2]   # UNKNOWN
    with pytest.raises(ValueError):
        ClusterPolicy(grpc_status=(0,))
