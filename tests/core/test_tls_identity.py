"""The compiled identity allow list (_core/tls/identity.pyx) and the config rule for its entries."""
from __future__ import annotations

import pytest

from fastmesh._core.tls.identity import Identities
from fastmesh.config.sections.tls import identity_problem

ALLOW = ["spiffe://mesh.test/ns/web/sa/api", "spiffe://mesh.test/ns/batch/*", "spiffe://other.test/*"]


@pytest.mark.parametrize("identity, allowed", [
    ("spiffe://mesh.test/ns/web/sa/api", True),              # exact
    ("spiffe://mesh.test/ns/web/sa/api2", False),            # exact means exact: no prefix match
    ("spiffe://mesh.test/ns/web/sa/ap", False),
    ("spiffe://mesh.test/ns/web/sa/API", False),             # SPIFFE paths are case-sensitive
    ("spiffe://mesh.test/ns/batch/sa/nightly", True),        # under the wildcard path
    ("spiffe://mesh.test/ns/batch/x", True),
    ("spiffe://mesh.test/ns/batch/", False),                 # the wildcard needs at least one byte after the /
    ("spiffe://mesh.test/ns/batch", False),
    ("spiffe://mesh.test/ns/batchy/sa/x", False),            # a text prefix, not a path prefix
    ("spiffe://other.test/anything/at/all", True),           # a whole trust domain
    ("spiffe://other.testing/x", False),
    ("", False),                                             # no identity (no certificate, or no URI SAN)
])
def test_allow_list(identity: str, allowed: bool) -> None:
    assert Identities(ALLOW).matches(identity) is allowed


def test_an_empty_list_allows_nothing_and_the_patterns_read_back() -> None:
    assert not Identities([]).matches("spiffe://mesh.test/ns/web/sa/api")
    assert len(Identities(ALLOW)) == 3 and Identities(ALLOW).patterns_text == ALLOW


@pytest.mark.parametrize("pattern, problem", [
    ("spiffe://mesh.test/ns/web/sa/api", None),
    ("spiffe://mesh.test/*", None),
    ("spiffe://mesh.test/ns/*", None),
    ("web", "a URI"),
    ("://mesh.test/x", "a URI"),
    ("spiffe://", "a URI"),
    ("spiffe://mesh test/x", "a URI"),
    ("spiffe://mesh.test/ns/*/sa/x", '"*" only'),
    ("spiffe://mesh.test/ns/web*", '"*" only'),
    ("spiffe://*", '"*" only'),
    ("spiffe:///*", '"*" only'),
])
def test_config_rule_for_entries(pattern: str, problem: str | None) -> None:
    found = identity_problem(pattern)
    assert (found is None) if problem is None else (found is not None and problem in found)
