"""Naming rules without sockets: the table's language (config/naming.py), the resolution order (the last matching
rule first, falling back to earlier ones), `|` fallback, weighted splits and wildcards, walked by the core's C
resolver (_core/naming.pyx) over liveness it is given, and the exchange sending a service route's request to the
cluster the name resolves to (with a fastmesh-naming override on a trusted router only)."""
from __future__ import annotations

import socket

import pytest

from fastmesh._core import errors
from fastmesh._core.balance.factory import make_balancer
from fastmesh._core.cluster import Cluster
from fastmesh._core.exchange import Exchange
from fastmesh._core.http1.pool import HttpPool
from fastmesh._core.naming import NameTable
from fastmesh._core.reactor import Reactor
from fastmesh._core.router import Router
from fastmesh._testbase.configs import http_listener
from fastmesh.config import naming as lang
from fastmesh.config.load import loads_config
from fastmesh.dataplane.naming import build_names, compile_table, explain_service, services_of
from fastmesh.errors import ConfigError

CLUSTERS = ["users-v1", "users-v2", "legacy", "billing", "users"]
ERR = {e["name"]: i for i, e in enumerate(errors.table(), start=1)}


def table(*rules: str) -> list[lang.Rule]:
    return lang.parse_table(list(rules), "t")


def resolved(rules: list[lang.Rule], service: str, alive: list[int] | None = None, draws: int = 2000
             ) -> dict[str, float]:
    """{cluster: share} of `draws` resolutions by the core with `alive` per cluster (default: all alive)."""
    t = compile_table(rules, [service], CLUSTERS)
    live = alive if alive is not None else [1] * len(CLUSTERS)
    return {CLUSTERS[c] if c >= 0 else "-": s for c, s in t.shares(0, live, draws).items()}


# ---- the language ----

def test_rules_are_normalised_and_comments_and_separators_split_them() -> None:
    rules = lang.parse_table("/svc=>/cluster # all\n/svc/users => 9*/cluster/users-v1 & 1 * /cluster/users-v2;"
                             "/svc/x => /cluster/a|/cluster/b", "t")
    assert [r.text for r in rules] == ["/svc => /cluster",
                                       "/svc/users => 9 * /cluster/users-v1 & 1 * /cluster/users-v2",
                                       "/svc/x => /cluster/a | /cluster/b"]
    assert rules[1].dest == ("split", ((9.0, ("path", ("cluster", "users-v1"))),
                                       (1.0, ("path", ("cluster", "users-v2")))))
    # `&` binds tighter than `|`; parentheses group, and are kept only where they are needed.
    rules = lang.parse_table("/a => (0.5*(/cluster/a|~) & .5 * /cluster/b) | (!) ; /b => ((/cluster/a))", "t")
    assert [r.text for r in rules] == ["/a => 0.5 * (/cluster/a | ~) & 0.5 * /cluster/b | !", "/b => /cluster/a"]
    assert lang.parse_table(rules[0].text, "t") == rules[:1]                # the normal form parses to itself


@pytest.mark.parametrize("text, message", [
    ("/svc/users /cluster/x", "t: rule 0 ('/svc/users /cluster/x'): expected 'PREFIX => DESTINATION'"),
    ("svc => /cluster", "prefix: expected a path starting with '/', got 'svc'"),
    ("/svc => /cluster/a b", "column 20: expected '|', '&' or the end of the rule, got 'b'"),
    ("/svc => /cluster/*", "destination: segment '*' of '/cluster/*'"),
    ("/svc => 0 * /cluster/a & 1 * /cluster/b", "weights must be above 0"),
    ("/svc => /cluster/a |", "expected a destination path on each side of '|'"),
    # Errors name the rule and the column (of the whole rule text) where the parser stopped.
    ("/svc => (/cluster/a | /cluster/b",
     "t: rule 0 ('/svc => (/cluster/a | /cluster/b'): column 33: expected ')' closing the '(' at column 9"),
    ("/svc => /cluster/a & | /cluster/b", "column 22: expected a destination path on each side of '|' and '&'"),
    ("/svc => 2 /cluster/a", "column 11: expected '*' after the weight 2"),
    ("/svc => /cluster/a )", "column 20: expected '|', '&' or the end of the rule, got ')'"),
    ("/svc => /cluster/a | ^", "column 22: expected a path, '~', '!' or '(', got '^'"),
    ("/svc =>", "column 8: expected a destination"),
    ("/svc => " + "(" * 40 + "/cluster/a" + ")" * 40, "column 41: at most 32 parentheses inside each other"),
])
def test_bad_rules_say_where_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(lang.NamingError) as info:
        lang.parse_table([text], "t")
    assert message in str(info.value)


# ---- which rule wins ----

def test_the_last_matching_rule_wins_and_the_rest_of_the_name_is_appended() -> None:
    rules = table("/svc => /cluster", "/svc/users => /cluster/users-v2")
    assert resolved(rules, "users") == {"users-v2": 1.0}
    assert resolved(rules, "billing") == {"billing": 1.0}            # /svc/billing -> /cluster/billing
    # Order matters: the same two rules the other way round send users to /cluster/users.
    assert resolved(table("/svc/users => /cluster/users-v2", "/svc => /cluster"), "users") == {"users": 1.0}


def test_a_later_rule_that_resolves_to_nothing_falls_back_to_an_earlier_one() -> None:
    rules = table("/svc/users => /cluster/legacy", "/svc/users => /cluster/nonexistent")
    assert resolved(rules, "users") == {"legacy": 1.0}              # unknown cluster: decided when compiled
    rules = table("/svc/users => /cluster/legacy", "/svc/users => /cluster/users-v1")
    alive = [0, 1, 1, 1, 1]                                         # users-v1 has no endpoint up: per request
    assert resolved(rules, "users", alive) == {"legacy": 1.0}
    assert resolved(rules, "users") == {"users-v1": 1.0}


def test_alternatives_fall_back_in_order_and_the_first_is_taken_when_none_lives() -> None:
    rules = table("/svc/users => /cluster/users-v1 | /cluster/users-v2 | /cluster/legacy")
    assert resolved(rules, "users", [1, 1, 1, 0, 0]) == {"users-v1": 1.0}
    assert resolved(rules, "users", [0, 1, 1, 0, 0]) == {"users-v2": 1.0}
    assert resolved(rules, "users", [0, 0, 1, 0, 0]) == {"legacy": 1.0}
    # Nothing live: the first cluster the name prefers takes it (its own fail-open and errors then apply).
    assert resolved(rules, "users", [0, 0, 0, 0, 0]) == {"users-v1": 1.0}


def test_wildcards_match_one_segment_and_names_through_other_names() -> None:
    rules = table("/svc => /cluster", "/svc/*/canary => /cluster/users-v2", "/env/prod => /svc")
    assert resolved(rules, "/svc/users/canary") == {"users-v2": 1.0}
    assert resolved(rules, "/svc/billing/canary") == {"users-v2": 1.0}
    assert resolved(rules, "/svc/users/canary/x") == {"users-v2": 1.0}      # a prefix: longer names match too
    assert resolved(rules, "/env/prod/billing") == {"billing": 1.0}         # /env/prod -> /svc -> /cluster


def test_a_loop_or_a_name_no_rule_matches_resolves_to_nothing() -> None:
    rules = table("/svc/a => /svc/b", "/svc/b => /svc/a")
    tree = lang.resolve(rules, "/svc/a", CLUSTERS)
    assert lang.clusters_named(tree) == []
    assert "a loop" in " ".join(n.label for n in lang.walk(tree))
    t = compile_table(rules, ["a", "zzz"], CLUSTERS)
    assert t.shares(0, [1] * 5, 100) == {-1: 1.0} and t.shares(1, [1] * 5, 100) == {-1: 1.0}


def test_tilde_falls_through_and_bang_stops_the_fallback() -> None:
    # `~` resolves to nothing: the next alternative, then the earlier rules, are tried (Linkerd's `~`, Neg).
    rules = table("/svc/users => /cluster/legacy", "/svc/users => ~ | /cluster/users-v1")
    assert resolved(rules, "users") == {"users-v1": 1.0}
    assert resolved(rules, "users", [0, 1, 1, 1, 1]) == {"legacy": 1.0}
    assert resolved(table("/svc/users => /cluster/legacy", "/svc/users => ~"), "users") == {"legacy": 1.0}
    # `!` fails: nothing after it, and no earlier rule, is tried; the request gets no cluster (-1), not the first
    # cluster the name prefers (Linkerd's `!`, Fail).
    rules = table("/svc/users => /cluster/legacy", "/svc/users => /cluster/users-v1 | !")
    assert resolved(rules, "users") == {"users-v1": 1.0}
    assert resolved(rules, "users", [0, 1, 1, 1, 1]) == {"-": 1.0}
    rules = table("/svc => /cluster", "/svc/legacy => !")
    assert resolved(rules, "legacy") == {"-": 1.0} and resolved(rules, "billing") == {"billing": 1.0}
    # A `!` no branch reaches changes nothing; a table that fails on purpose is not a table that names nothing.
    assert resolved(table("/svc/users => /cluster/users-v1 | !"), "users", [1, 0, 0, 0, 0]) == {"users-v1": 1.0}
    assert not lang.names_nothing(lang.resolve(table("/svc/x => !"), "/svc/x", CLUSTERS))
    assert lang.names_nothing(lang.resolve(table("/svc/x => ~ | /cluster/none"), "/svc/x", CLUSTERS))


def test_parentheses_group_fallbacks_inside_a_split_and_a_failed_split_stops_the_fallback() -> None:
    rules = table("/svc/users => 0.5 * (/cluster/users-v1 | /cluster/legacy) & 0.5 * /cluster/users-v2 "
                  "| /cluster/billing")
    shares = resolved(rules, "users", draws=40_000)
    assert abs(shares["users-v1"] - 0.5) < 0.02 and abs(shares["users-v2"] - 0.5) < 0.02
    shares = resolved(rules, "users", [0, 1, 1, 1, 1], draws=40_000)     # v1 down: its half goes to legacy
    assert abs(shares["legacy"] - 0.5) < 0.02 and abs(shares["users-v2"] - 0.5) < 0.02
    assert resolved(rules, "users", [0, 0, 0, 1, 1]) == {"billing": 1.0}  # the whole split dead: `|`
    # A split whose live branches are gone and one of which failed fails as a whole: no `|` after it.
    rules = table("/svc/users => 0.9 * /cluster/users-v1 & 0.1 * (/cluster/users-v2 | !) | /cluster/billing")
    assert resolved(rules, "users", [0, 0, 1, 1, 1]) == {"-": 1.0}
    shares = resolved(rules, "users", [1, 0, 1, 1, 1])                   # v1 live: the failed branch's share is v1's
    assert shares == {"users-v1": 1.0}


def test_explain_words_tilde_bang_and_groups() -> None:
    cfg = loads_config(config_text('"/svc/users => /cluster/legacy", "/svc/users => (~ | /cluster/users-v1) | !"'))
    out = explain_service(cfg, "users", {"users-v1": False, "legacy": True})
    text = "\n".join(out["steps"])
    assert out["cluster"] is None and out["failed"] is True, text
    assert "~: nothing here (fallback continues)" in text and "!: fails here (no fallback)" in text, text
    assert "failed at a '!'" in text
    out = explain_service(cfg, "users", {"users-v1": True, "legacy": True})
    assert out["cluster"] == "users-v1" and out["failed"] is False


# ---- weighted splits, drawn in C ----

def test_a_split_keeps_its_weights_and_gives_a_dead_branch_share_to_the_live_ones() -> None:
    rules = table("/svc/users => 0.9 * /cluster/users-v1 & 0.1 * /cluster/users-v2 | /cluster/legacy")
    shares = resolved(rules, "users", draws=100_000)
    assert abs(shares["users-v1"] - 0.9) < 0.01 and abs(shares["users-v2"] - 0.1) < 0.01
    assert resolved(rules, "users", [0, 1, 1, 1, 1]) == {"users-v2": 1.0}
    assert resolved(rules, "users", [0, 0, 1, 1, 1]) == {"legacy": 1.0}     # the whole split is dead: `|`


def test_three_way_split_of_names_that_resolve_further() -> None:
    rules = table("/svc => /cluster", "/svc/users => 1 * /svc/users-v1 & 2 * /svc/users-v2 & 1 * /svc/nowhere")
    shares = resolved(rules, "users", draws=60_000)
    # /svc/nowhere -> /cluster/nowhere: unknown, so its weight goes to the others in proportion (1:2).
    assert abs(shares["users-v1"] - 1 / 3) < 0.015 and abs(shares["users-v2"] - 2 / 3) < 0.015


def test_trace_reports_each_step_and_explain_words_them() -> None:
    rules = table("/svc => /cluster", "/svc/users => /cluster/users-v1 | /cluster/legacy")
    t = compile_table(rules, ["users"], CLUSTERS)
    got, trace = t.trace(0, [0, 1, 1, 1, 1])
    assert got == CLUSTERS.index("legacy") and len(trace) == t.sizes[0]
    assert -2 in trace                   # the earlier rule (/svc => /cluster) was never reached
    cfg = loads_config(config_text('"/svc => /cluster", "/svc/users => /cluster/users-v1 | /cluster/legacy"'))
    out = explain_service(cfg, "users", {"users-v1": False, "legacy": True, "users": True})
    assert out["cluster"] == "legacy" and out["shares"] == {"legacy": 1.0}
    text = "\n".join(out["steps"])
    assert "rule 1 (/svc/users => /cluster/users-v1 | /cluster/legacy)" in text
    assert "cluster users-v1 has no endpoint up: skipped" in text and "fallback: 1 earlier branch" in text


# ---- the exchange sends a service route's request where the name resolves ----

def pools(reactor: Reactor) -> list[HttpPool]:
    out = []
    for i, name in enumerate(CLUSTERS):
        cluster = Cluster(name, [(socket.AF_INET, "127.0.0.1", 9100 + i)], make_balancer("round_robin", [1], seed=3))
        out.append(HttpPool(reactor, cluster))
    return out


def config_text(rules: str, trust: bool = False) -> str:
    clusters = "\n".join(f'[clusters.{c}]\nendpoints = ["127.0.0.1:{9100 + i}"]' for i, c in enumerate(CLUSTERS))
    return http_listener(4141) + f"""trust_naming = {'true' if trust else 'false'}
[[listeners.routes]]
path_prefix = "/u"
service = "users"
[[listeners.routes]]
cluster = "billing"
{clusters}
[naming]
rules = [{rules}]
"""


def head(target: bytes = b"/u", *lines: bytes) -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: example.com", *lines]) + b"\r\n\r\n"


def router_for(text: str) -> tuple[Router, list[HttpPool]]:
    from fastmesh.dataplane.routes import build_router
    cfg = loads_config(text)
    return build_router(cfg.listeners[0], list(cfg.clusters), build_names(cfg)), pools(Reactor())


def test_exchange_takes_the_cluster_the_service_resolves_to_and_falls_back_when_it_has_no_endpoint_up() -> None:
    router, ps = router_for(config_text('"/svc/users => /cluster/users-v1 | /cluster/legacy"'))
    ex = Exchange()
    assert ex.start(router, ps, head(), 0.0) == 0 and ex.cluster == CLUSTERS.index("users-v1")
    ex.finish()
    ps[0].cluster.set_health(0, False)                      # users-v1's only endpoint fails its checks
    assert ex.start(router, ps, head(), 1.0) == 0 and ex.cluster == CLUSTERS.index("legacy")
    ex.finish()
    assert ex.start(router, ps, head(b"/x"), 2.0) == 0 and ex.cluster == CLUSTERS.index("billing")
    ex.finish()


def test_a_service_that_names_no_cluster_is_answered_503_no_endpoints() -> None:
    names = build_names(loads_config(config_text('"/svc/users => /cluster/users"')))
    names.set_table(NameTable([None], ["users"]))           # a table that has nothing for users
    router = Router([{"service": "users"}], CLUSTERS, ["users"], names)
    ex = Exchange()
    assert ex.start(router, pools(Reactor()), head(), 0.0) == ERR["no_endpoints"]
    ex.finish()


def test_override_field_steers_a_trusted_router_and_is_removed_by_an_untrusted_one() -> None:
    rules = '"/svc/users => /cluster/users-v1"'
    override = b"fastmesh-naming: /svc/users => /cluster/users-v2 ; /svc/x => /cluster/legacy"
    trusted, ps = router_for(config_text(rules, trust=True))
    assert trusted.target_request(head(), ps) == CLUSTERS.index("users-v1")
    assert trusted.target_request(head(b"/u", override), ps) == CLUSTERS.index("users-v2")
    assert trusted.target_request(head(b"/u", b"fastmesh-naming: not a rule"), ps) == CLUSTERS.index("users-v1")
    assert ("remove", b"fastmesh-naming", b"") not in trusted.request_edits(0)       # passed on to the next hop
    untrusted, ps = router_for(config_text(rules, trust=False))
    assert untrusted.target_request(head(b"/u", override), ps) == CLUSTERS.index("users-v1")
    assert untrusted.request_edits(0)[0] == ("remove", b"fastmesh-naming", b"")
    assert untrusted.request_edits(1)[0] == ("remove", b"fastmesh-naming", b"")     # cluster routes strip it too


# ---- the config ----

@pytest.mark.parametrize("rules, route, message", [
    ('["/svc/users => cluster/x"]', 'service = "users"',
     'naming.rules: rule 0 (\'/svc/users => cluster/x\'): column 15: destination: expected a path starting with \'/\''),
    ('["/svc/users => /cluster/users"]', 'service = "users"\ncluster = "users"',
     "routes[0].service: expected no service beside cluster"),
    ('["/svc/users => /cluster/nope"]', 'service = "users"',
     "routes[0].service: expected a name naming.rules resolve to a cluster (they send /svc/users to none)"),
    ('["/svc => /cluster"]', 'service = "a b"', 'routes[0].service: expected a logical name like "users"'),
])
def test_config_errors_name_the_key_and_what_was_expected(rules: str, route: str, message: str) -> None:
    text = http_listener(4141) + f"""[[listeners.routes]]
{route}
[clusters.users]
endpoints = ["127.0.0.1:9001"]
[naming]
rules = {rules}
"""
    with pytest.raises(ConfigError) as info:
        loads_config(text, "n.toml")
    assert message in str(info.value), str(info.value)


def test_a_watched_table_may_name_services_the_config_cannot_resolve_yet() -> None:
    cfg = loads_config(config_text('"/svc/other => /cluster/legacy"').replace(
        "[naming]", '[naming]\nsource = { kind = "file", path = "naming.dtab" }'))
    assert cfg.naming.source is not None and cfg.naming.source.path == "naming.dtab"
    assert build_names(cfg).current.first_cluster(0) == -1


# ---- cluster templates ----

TEMPLATE_BASE = http_listener(4141) + """[[listeners.routes]]
service = "users-v2"
[clusters.users]
endpoints = ["127.0.0.1:9001"]
[naming]
rules = ["/svc => /cluster"]
"""


@pytest.mark.parametrize("template, message", [
    ('[cluster_templates.users]\ndiscovery = { kind = "etcd", endpoints = ["127.0.0.1:2379"], prefix = "/s/{name}/" }',
     'cluster_templates.users: expected a pattern of letters, digits, "_", "-" and "." with at least one "*"'),
    ('[cluster_templates."users-*"]\nbalancer = "p2c"',
     "cluster_templates.\"users-*\".discovery: missing key"),
    ('[cluster_templates."users-*"]\ndiscovery = { kind = "etcd", endpoints = ["127.0.0.1:2379"], prefix = "/s/" }',
     "cluster_templates.\"users-*\".discovery.prefix: expected a value with \"{name}\" where the cluster's name goes"),
    ('[cluster_templates."users-*"]\ndiscovery = { kind = "plugin", plugin = "x:Y" }',
     'cluster_templates."users-*".discovery.kind: expected a kind a template can fill in'),
    ('[cluster_templates."users-*"]\nmax_clusters = 0\ndiscovery = { kind = "file", path = "{name}.json" }',
     "cluster_templates.\"users-*\".max_clusters"),
])
def test_template_config_errors_name_the_key(template: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(TEMPLATE_BASE + template, "n.toml")
    assert message in str(info.value), str(info.value)


def test_a_name_a_template_makes_counts_as_named_and_explain_says_so() -> None:
    with pytest.raises(ConfigError):                                # without the template: users-v2 is no cluster
        loads_config(TEMPLATE_BASE, "n.toml")
    cfg = loads_config(TEMPLATE_BASE + '[cluster_templates."users-*"]\ndiscovery = { kind = "file", '
                                       'path = "eps/{name}.json" }\nidle_timeout = "30s"', "n.toml")
    t = cfg.cluster_templates["users-*"]
    assert (t.max_clusters, t.idle_timeout, t.cluster.discovery and t.cluster.discovery.path) == \
        (100, 30.0, "eps/{name}.json")
    out = explain_service(cfg, "users-v2", {"users": True})
    assert "no cluster 'users-v2' yet (template 'users-*' makes it)" in "\n".join(out["steps"]), out["steps"]
    from fastmesh.discovery.templates import Made, make_cluster
    made = make_cluster(t, "users-v2")
    assert (made.name, made.template, made.discovery and made.discovery.path) == \
        ("users-v2", "users-*", "eps/users-v2.json")
    # Bounded, and idle ones go once nothing names them for idle_timeout (time passed in, no sleeping).
    import dataclasses
    small = dataclasses.replace(cfg, cluster_templates={"users-*": dataclasses.replace(t, max_clusters=2)})
    m = Made()
    assert m.update(small, ["users-v2", "users-v3", "users-v4", "users"], now=0.0)
    assert sorted(m.clusters) == ["users-v2", "users-v3"] and m.refused["users-*"] == 1   # users: a [clusters] table
    assert not m.update(small, ["users-v3", "users-v4"], now=10.0)                      # v2 unnamed since 10 s
    assert m.update(small, ["users-v3", "users-v4"], now=40.0)                          # ...30 s later: removed
    assert sorted(m.clusters) == ["users-v3", "users-v4"] and m.removed["users-*"] == 1


def test_each_resolution_is_counted_by_outcome() -> None:
    rules = table("/svc/users => /cluster/legacy", "/svc/users => /cluster/users-v1 | /cluster/users-v2",
                  "/svc/gone => !", "/svc/split => 0.5 * (/cluster/users-v1 | /cluster/legacy) & 0.5 * /cluster/x")
    t = compile_table(rules, ["users", "gone", "split", "nothing"], CLUSTERS)
    assert t.outcome(0, [1, 1, 1, 1, 1]) == (0, "chosen")
    assert t.outcome(0, [0, 1, 1, 1, 1]) == (1, "fallback")                  # a `|` branch past users-v1
    assert t.outcome(0, [0, 0, 1, 1, 1]) == (2, "fallback")                  # the earlier rule
    assert t.outcome(0, [0, 0, 0, 1, 1]) == (0, "first")                     # nothing live: the first preferred
    assert t.outcome(1, [1, 1, 1, 1, 1]) == (-1, "none")                     # `!`
    assert t.outcome(3, [1, 1, 1, 1, 1]) == (-1, "none")                     # no rule: no cluster
    # A split's drawn branch that fell back inside its parentheses counts as a fallback; x is no cluster, so its
    # share goes to the other branch, which is not one.
    assert t.outcome(2, [1, 1, 1, 1, 1]) == (0, "chosen")
    assert t.outcome(2, [0, 1, 1, 1, 1]) == (2, "fallback")


LISTENER_SERVICE = """
[[listeners]]
name = "web"
listen = "127.0.0.1:4141"
protocol = "{protocol}"
{listener}
[[listeners.routes]]
path_prefix = "/b"
cluster = "billing"
{clusters}
[naming]
rules = ["/svc/users => /cluster/users-v2"]
"""


def listener_service(listener: str, protocol: str = "http") -> str:
    clusters = "\n".join(f'[clusters.{c}]\nendpoints = ["127.0.0.1:{9100 + i}"]' for i, c in enumerate(CLUSTERS))
    return LISTENER_SERVICE.format(protocol=protocol, listener=listener, clusters=clusters)


def test_a_listener_service_takes_what_no_route_matches() -> None:
    router, ps = router_for(listener_service('service = "users"'))
    ex = Exchange()
    assert ex.start(router, ps, head(b"/x"), 0.0) == 0 and ex.cluster == CLUSTERS.index("users-v2")
    ex.finish()
    assert ex.start(router, ps, head(b"/b"), 1.0) == 0 and ex.cluster == CLUSTERS.index("billing")
    ex.finish()
    cfg = loads_config(listener_service('service = "users"'))
    assert services_of(cfg) == ["users"]
    from fastmesh.config.load import config_from_dict, config_to_dict
    assert config_from_dict(config_to_dict(cfg)).listeners[0].service == "users"      # /config keeps it


@pytest.mark.parametrize("listener, protocol, message", [
    ('service = "users"\ncluster = "billing"', "http",
     "listeners[0].service: expected no service beside cluster (both say where unmatched requests go)"),
    ('service = "nope"', "http", "listeners[0].service: expected a name naming.rules resolve to a cluster"),
    ('service = "users"\ncluster = "billing"', "tcp",
     "listeners[0].service: expected no service beside cluster (both say where connections go)"),
    ('service = "nope"', "tcp", "listeners[0].service: expected a name naming.rules resolve to a cluster"),
])
def test_listener_service_errors(listener: str, protocol: str, message: str) -> None:
    text = listener_service(listener, protocol)
    if protocol == "tcp":
        text = text.replace('[[listeners.routes]]\npath_prefix = "/b"\ncluster = "billing"\n', "")
    with pytest.raises(ConfigError) as info:
        loads_config(text, "n.toml")
    assert message in str(info.value), str(info.value)
