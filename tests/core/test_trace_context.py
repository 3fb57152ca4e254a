"""W3C trace context without sockets: the traceparent parser against the recommendation's rules, and the header
edits an exchange asks the codec for (continue a caller's trace, start one on an edge listener, leave an invalid or
absent one alone elsewhere), rendered by the HTTP/1 codec's own renderer."""
from __future__ import annotations

import re

import pytest

from fastmesh._core import tracing
from fastmesh._core.exchange import sample_max
from fastmesh._core.http1.render import forwarded_head
from tests.core.test_exchange import FakeCodec, head

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
TRACEPARENT_RE = re.compile(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

INVALID = [
    f"00-{TRACE}-{PARENT}-1",                          # short
    f"00-{TRACE}-{PARENT}-01-",                        # version 00 is exactly 55 bytes
    f"00-{TRACE.upper()}-{PARENT}-01",                 # uppercase hex
    f"00-{'0' * 32}-{PARENT}-01",                      # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                       # all-zero parent id
    f"ff-{TRACE}-{PARENT}-01",                         # version ff is never valid
    f"00_{TRACE}-{PARENT}-01",                         # separator
    f"00-{TRACE}-{PARENT}-0g",                         # flags not hex
    f"zz-{TRACE}-{PARENT}-01",                         # version not hex
    f"01-{TRACE}-{PARENT}-01x",                        # a later version: 55 bytes, then "-" or nothing
    "",
]


def test_parser_accepts_version_00_and_reads_later_versions_as_00() -> None:
    assert tracing.parse_traceparent(VALID.encode()) == (TRACE, PARENT, 1)
    assert tracing.parse_traceparent(f"00-{TRACE}-{PARENT}-00".encode()) == (TRACE, PARENT, 0)
    assert tracing.parse_traceparent(f"cc-{TRACE}-{PARENT}-09-more".encode()) == (TRACE, PARENT, 9)
    assert tracing.parse_traceparent(f"01-{TRACE}-{PARENT}-01".encode()) == (TRACE, PARENT, 1)


@pytest.mark.parametrize("value", INVALID)
def test_parser_rejects(value: str) -> None:
    assert tracing.parse_traceparent(value.encode()) is None


def test_new_ids_are_hex_nonzero_and_differ_after_reseeding_alike() -> None:
    seen = {tracing.new_ids() for _ in range(1000)}
    assert len(seen) == 1000
    for trace_id, span_id in seen:
        assert re.fullmatch("[0-9a-f]{32}", trace_id) and trace_id != "0" * 32
        assert re.fullmatch("[0-9a-f]{16}", span_id) and span_id != "0" * 16
    tracing.seed(b"12345678")
    first = tracing.new_ids()
    tracing.seed(b"12345678")
    assert tracing.new_ids() == first          # one seed, one sequence: hence a fresh seed per worker
    tracing.seed()
    assert tracing.new_ids() != first


def forwarded(raw: bytes, **options: object) -> tuple[list[bytes], str]:
    codec = FakeCodec()
    ex, err = codec.start(raw, **options)
    assert err == 0
    out = forwarded_head(ex, raw).split(b"\r\n")
    trace_id = ex.trace_id()
    ex.finish()
    return out, trace_id


def test_a_valid_traceparent_continues_under_a_new_span_id() -> None:
    out, trace_id = forwarded(head(b"/api/x", f"traceparent: {VALID}".encode(), b"tracestate: a=1,b=2"))
    (line,) = [x for x in out if x.lower().startswith(b"traceparent")]
    m = TRACEPARENT_RE.fullmatch(line)
    assert m and m[1].decode() == TRACE and m[2].decode() != PARENT and m[3] == b"01"
    assert trace_id == TRACE
    assert b"tracestate: a=1,b=2" in out          # untouched
    out, _ = forwarded(head(b"/api/x", f"traceparent: 00-{TRACE}-{PARENT}-00".encode()))
    assert [TRACEPARENT_RE.fullmatch(x)[3] for x in out if x.startswith(b"traceparent")] == [b"00"]   # kept


def test_the_traceparent_is_rewritten_where_it_stands() -> None:
    """A version-00 value (55 bytes) takes ours in place: same line, same spelling of the name, same position among
    the fields; a longer one (a later version) is dropped and ours, version 00, added."""
    out, _ = forwarded(head(b"/api/x", b"x-before: 1", f"TraceParent: {VALID}".encode(), b"x-after: 2"))
    names = [x.split(b":")[0] for x in out[1:] if x]
    assert names.index(b"TraceParent") == names.index(b"x-before") + 1 == names.index(b"x-after") - 1
    (line,) = [x for x in out if x.lower().startswith(b"traceparent")]
    assert line.startswith(f"TraceParent: 00-{TRACE}-".encode()) and not line.endswith(PARENT.encode() + b"-01")
    later = f"cc-{TRACE}-{PARENT}-01-more"
    out, _ = forwarded(head(b"/api/x", f"traceparent: {later}".encode(), b"x-after: 2"))
    lines = [x for x in out if x.lower().startswith(b"traceparent")]
    assert len(lines) == 1 and TRACEPARENT_RE.fullmatch(lines[0])[1].decode() == TRACE
    assert out.index(lines[0]) > out.index(b"x-after: 2")


def test_a_tracestate_too_long_loses_members_from_the_end() -> None:
    members = [f"k{i}=" + "v" * 40 for i in range(12)]            # 12 members of 44 bytes: 539 > 512
    out, _ = forwarded(head(b"/api/x", f"traceparent: {VALID}".encode(), f"tracestate: {','.join(members)}".encode()))
    assert [x for x in out if x.lower().startswith(b"tracestate")] == [f"tracestate: {','.join(members[:11])}".encode()]


def test_a_tracestate_without_a_valid_member_is_not_sent() -> None:
    out, _ = forwarded(head(b"/api/x", f"traceparent: {VALID}".encode(), b"tracestate: A=1,b"))
    assert not any(x.lower().startswith(b"tracestate") for x in out)
    out, _ = forwarded(head(b"/api/x", f"traceparent: {VALID}".encode(), b"tracestate: a=1", b"tracestate: b=2"))
    assert b"tracestate: a=1" in out and b"tracestate: b=2" in out      # valid: passed as it came


BIG = "big=" + "x" * 200
FORTY = [f"m{i}=" + "v" * 40 for i in range(11)]                  # 44 bytes each: 11 of them and BIG exceed 512


@pytest.mark.parametrize(("values", "sent"), [
    ([b"a=1,b=2"], None),                                          # valid: untouched
    ([b"a=1", b"b=2"], None),                                      # two fields combine; untouched
    ([b"a=1,,  , b=2\t"], None),                                   # empty members and OWS are allowed
    ([b"t61rcWkgMzE@vendor=x,3rd@a-b_c*d/e=y"], b"3rd@a-b_c*d/e=y"),   # uppercase in a tenant id: invalid
    ([b"a=1,B=2,c=3"], b"a=1,c=3"),                                # an invalid key is dropped, the rest kept
    ([b"a=1,b=x=y,c=,d"], b"a=1"),                                 # "=" in a value, empty value, no "="
    ([b"a=1", b"a=2,b=3"], b"a=1,b=3"),                            # a repeated key: the first stands
    ([b"t@" + b"s" * 15 + b"=1,t@" + b"s" * 14 + b"=2"], b"t@" + b"s" * 14 + b"=2"),   # system id up to 14
    ([b"k=" + b"v" * 257, b"k2=" + b"v" * 256], b"k2=" + b"v" * 256),    # a value up to 256 characters
    ([",".join(f"k{i}=1" for i in range(33)).encode()], ",".join(f"k{i}=1" for i in range(32)).encode()),
    ([",".join([BIG, *FORTY]).encode()], ",".join(FORTY).encode()),     # too long: the big member goes first
    ([",".join([*FORTY, "z=1"]).encode(), b"y=" + b"w" * 60], ",".join([*FORTY, "z=1"]).encode()),   # the end
    ([b"A=1", b"#"], b""),                                         # no valid member: none is sent
])
def test_tracestate_follows_w3c_rules(values: list[bytes], sent: bytes | None) -> None:
    assert tracing.trim_tracestate(values) == sent


@pytest.mark.parametrize("value", [v for v in INVALID if v])
def test_an_invalid_traceparent_passes_untouched_unless_traces_start_here(value: str) -> None:
    raw = head(b"/api/x", f"traceparent: {value}".encode(), b"tracestate: a=1")
    out, trace_id = forwarded(raw)
    assert f"traceparent: {value}".encode() in out and b"tracestate: a=1" in out and trace_id == ""
    out, trace_id = forwarded(raw, trace="start")
    lines = [x for x in out if x.lower().startswith(b"traceparent")]
    assert len(lines) == 1 and TRACEPARENT_RE.fullmatch(lines[0])[1].decode() == trace_id != TRACE
    assert not any(x.lower().startswith(b"tracestate") for x in out)    # it belonged to the replaced context


def test_two_traceparent_fields_are_invalid() -> None:
    raw = head(b"/api/x", f"traceparent: {VALID}".encode(), f"traceparent: {VALID}".encode())
    out, trace_id = forwarded(raw)
    assert out.count(f"traceparent: {VALID}".encode()) == 2 and trace_id == ""


def test_edge_listener_starts_traces_at_its_sampling_rate() -> None:
    out, trace_id = forwarded(head(b"/api/x"), trace="start", sample_rate=1.0)
    (line,) = [x for x in out if x.startswith(b"traceparent")]
    assert TRACEPARENT_RE.fullmatch(line)[1].decode() == trace_id and line.endswith(b"-01")
    out, _ = forwarded(head(b"/api/x"), trace="start", sample_rate=0.0)
    assert [x[-2:] for x in out if x.startswith(b"traceparent")] == [b"00"]
    flags = [forwarded(head(b"/api/x"), trace="start", sample_rate=0.25)[0] for _ in range(400)]
    sampled = sum(1 for out in flags for x in out if x.startswith(b"traceparent") and x.endswith(b"-01"))
    assert 50 <= sampled <= 150                        # 100 expected; the bounds are > 5 sigma wide
    assert sample_max(0.0) == 0 and sample_max(1.0) == 2 ** 64 - 1 and sample_max(0.5) == 2 ** 63


def test_without_a_traceparent_nothing_is_added_and_off_means_untouched() -> None:
    out, trace_id = forwarded(head(b"/api/x"))
    assert not any(x.lower().startswith(b"trace") for x in out) and trace_id == ""
    out, trace_id = forwarded(head(b"/api/x", f"traceparent: {VALID}".encode()), trace="off")
    assert f"traceparent: {VALID}".encode() in out and trace_id == ""
    # An exchange reused for a request without trace context sends none (its edits are switched off again).
    codec = FakeCodec()
    ex, _ = codec.start(head(b"/api/x", f"traceparent: {VALID}".encode()))
    ex.finish()
    raw = head(b"/api/x")
    ex.start(codec.router, [codec.pool], raw, codec.clock.now)
    assert b"traceparent" not in forwarded_head(ex, raw) and ex.trace_id() == ""
    ex.finish()
