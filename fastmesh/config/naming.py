"""The naming table's language: rules that map logical names to clusters (Linkerd 1's dtabs, made readable).

A rule is `PREFIX => DESTINATION`:
  - PREFIX is a path of segments, `/svc/users`; a `*` segment matches any one segment (`/svc/*/v2`).
  - DESTINATION is one or more alternatives separated by `|` (the first that resolves to a live cluster wins);
    each alternative is one path or a weighted split `0.9 * /cluster/users-v1 & 0.1 * /cluster/users-v2`
    (a path without a weight has weight 1).
  - `/cluster/NAME` names a cluster of the config; any other destination path is looked up in the table again.
A table is a list of rules; as text (a watched file, an etcd value, a `fastmesh-naming` header) rules are separated
by `;` or new lines, and `#` starts a comment.

Resolving a name (a route's `service = "users"` is the name `/svc/users`): the rules whose PREFIX matches the name's
first segments are tried from the LAST to the first (Linkerd's order: a rule added later overrides earlier ones).
The segments after the prefix are appended to each destination path, so `/svc => /cluster` sends `/svc/users` to
cluster `users`. A rule whose destination resolves to nothing (an unknown cluster, a cluster with no endpoint up)
falls through to the next earlier matching rule, like a `|`. Whether a cluster has an endpoint up is decided per
request, in the core (fastmesh/_core/naming.pyx); this module builds the tree the core walks.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

CLUSTER_PREFIX = "cluster"          # /cluster/NAME: a concrete cluster (the end of a lookup)
SERVICE_PREFIX = "/svc/"            # a route's service = "users" is the name /svc/users
MAX_DEPTH = 16                      # lookups inside one resolution: deeper is taken for a loop
MAX_SPLIT = 32                      # branches of one weighted split (the core keeps their results on its stack)
MAX_RULES = 1000
OVERRIDE_WHERE = "fastmesh-naming"  # where an override's rules come from, in messages

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.:@-]+")
_WEIGHT_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*\*\s*(.*)", re.DOTALL)


class NamingError(ValueError):
    """A table that does not parse: the message says where (rule number, text) and what was expected."""


@dataclass(frozen=True)
class Rule:
    """One parsed rule: prefix segments (`*` matches any one) and destination alternatives of weighted paths."""
    prefix: tuple[str, ...]
    alternatives: tuple[tuple[tuple[float, tuple[str, ...]], ...], ...]
    text: str                       # the rule as normalised text (what /naming and explain show)


@dataclass
class Node:
    """A step of a resolution: what the core walks per request and what explain shows.

    kind: "cluster" (a concrete cluster, index into the cluster list, or a neg when the cluster is unknown),
    "alt" (the first child that resolves wins), "split" (a child drawn by weight among the live ones),
    "neg" (resolves to nothing). `label` says why the step exists (the path looked up, the rule applied).
    """
    kind: str
    label: str
    children: list[Node] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    cluster: int = -1


def path_text(segments: Sequence[str]) -> str:
    return "/" + "/".join(segments)


def _path(text: str, where: str, wildcard: bool) -> tuple[str, ...]:
    text = text.strip()
    if not text.startswith("/"):
        raise NamingError(f"{where}: expected a path starting with '/', got {text!r}")
    parts = tuple(text[1:].split("/")) if text != "/" else ()
    for part in parts:
        if part == "*" and wildcard:
            continue
        if not _SEGMENT_RE.fullmatch(part):
            allowed = "letters, digits, '_', '.', ':', '@', '-'" + (" or '*'" if wildcard else "")
            raise NamingError(f"{where}: segment {part!r} of {text!r}: expected {allowed}")
    return parts


def _fmt_weight(w: float) -> str:
    return str(int(w)) if w == int(w) else repr(w)


def parse_rule(text: str, where: str) -> Rule:
    """One rule; NamingError naming `where` and what was expected."""
    prefix_text, arrow, dest_text = text.partition("=>")
    if not arrow:
        raise NamingError(f"{where}: expected 'PREFIX => DESTINATION', got {text.strip()!r}")
    prefix = _path(prefix_text, f"{where}: prefix", wildcard=True)
    alternatives = []
    for alt in dest_text.split("|"):
        if not alt.strip():
            raise NamingError(f"{where}: expected a destination path on each side of '|', got {dest_text.strip()!r}")
        terms = []
        for term in alt.split("&"):
            m = _WEIGHT_RE.fullmatch(term)
            weight, path = (float(m[1]), m[2]) if m else (1.0, term)
            if weight <= 0:
                raise NamingError(f"{where}: weights must be above 0, got {term.strip()!r}")
            terms.append((weight, _path(path, f"{where}: destination", wildcard=False)))
        if len(terms) > MAX_SPLIT:
            raise NamingError(f"{where}: at most {MAX_SPLIT} branches in one split, got {len(terms)}")
        alternatives.append(tuple(terms))
    dest = " | ".join(
        " & ".join(path_text(p) if len(terms) == 1 else f"{_fmt_weight(w)} * {path_text(p)}" for w, p in terms)
        for terms in alternatives)
    return Rule(prefix, tuple(alternatives), f"{path_text(prefix)} => {dest}")


def split_text(text: str) -> list[str]:
    """A table as text -> its rules' texts: `;` or new lines between rules, `#` to the end of a line a comment."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        out.extend(part.strip() for part in line.split(";") if part.strip())
    return out


def parse_table(rules: Sequence[str] | str, where: str) -> list[Rule]:
    """A whole table (a list of rule texts, or text to split); NamingError for the first rule that is wrong."""
    texts = split_text(rules) if isinstance(rules, str) else [t for r in rules for t in split_text(r)]
    if len(texts) > MAX_RULES:
        raise NamingError(f"{where}: at most {MAX_RULES} rules, got {len(texts)}")
    return [parse_rule(t, f"{where}: rule {i} ({t!r})") for i, t in enumerate(texts)]


def service_name(service: str) -> str:
    """A route's service as the name looked up: "users" -> "/svc/users"; a name starting with "/" as it is."""
    return service if service.startswith("/") else SERVICE_PREFIX + service


def _matches(prefix: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return len(path) >= len(prefix) and all(p == "*" or p == s for p, s in zip(prefix, path))


def resolve(rules: Sequence[Rule], name: str, clusters: Sequence[str]) -> Node:
    """The resolution tree of a name: the core walks it per request (liveness and weights), explain shows it."""
    index = {c: i for i, c in reversed(list(enumerate(clusters)))}
    return _lookup(rules, _path(name, "name", wildcard=False), index, 0)


def _lookup(rules: Sequence[Rule], path: tuple[str, ...], index: dict[str, int], depth: int) -> Node:
    label = path_text(path)
    if path[:1] == (CLUSTER_PREFIX,):
        if len(path) < 2:
            return Node("neg", f"{label}: /cluster needs a cluster name")
        name = path[1]
        if name not in index:
            return Node("neg", f"{label}: no cluster {name!r}")
        return Node("cluster", label, cluster=index[name])
    if depth >= MAX_DEPTH:
        return Node("neg", f"{label}: more than {MAX_DEPTH} lookups (a loop in the rules?)")
    tries = []
    for i in range(len(rules) - 1, -1, -1):
        rule = rules[i]
        if not _matches(rule.prefix, path):
            continue
        rest = path[len(rule.prefix):]
        alts = []
        for terms in rule.alternatives:
            if len(terms) == 1:
                alts.append(_lookup(rules, terms[0][1] + rest, index, depth + 1))
            else:
                kids = [_lookup(rules, p + rest, index, depth + 1) for _, p in terms]
                alts.append(Node("split", " & ".join(f"{_fmt_weight(w)} * {path_text(p + rest)}" for w, p in terms),
                                 kids, [w for w, _ in terms]))
        dest = " | ".join(path_text(t[0][1] + rest) if len(t) == 1 else "split" for t in rule.alternatives)
        step = Node("alt", f"rule {i} ({rule.text}): {label} -> {dest}", alts)
        tries.append(step)
    if not tries:
        return Node("neg", f"{label}: no rule matches")
    return Node("alt", label, tries)


def clusters_named(node: Node) -> list[int]:
    """Every cluster index a tree can reach, in the order it prefers them."""
    if node.kind == "cluster":
        return [node.cluster]
    out: list[int] = []
    for kid in node.children:
        out.extend(i for i in clusters_named(kid) if i not in out)
    return out


def flatten(node: Node) -> list[tuple[int, int, list[int], list[float]]]:
    """The tree as the core's node array: per node (kind code, cluster, child node ids, weights); node 0 is the root.
    Kind codes: 0 neg, 1 cluster, 2 alt, 3 split (_core/naming.pxd's NodeKind)."""
    codes = {"neg": 0, "cluster": 1, "alt": 2, "split": 3}
    out: list[tuple[int, int, list[int], list[float]]] = []

    def add(n: Node) -> int:
        at = len(out)
        out.append((codes[n.kind], n.cluster, [], list(n.weights)))
        out[at][2].extend(add(kid) for kid in n.children)
        return at
    add(node)
    return out


def path_text_of(node: Node) -> str:
    """The path a split's branch looked up (its label up to the first ':')."""
    return node.label.split(":", 1)[0]


def walk(node: Node) -> list[Node]:
    """The nodes of a tree in flatten()'s order (node id -> Node)."""
    out = [node]
    for kid in node.children:
        out.extend(walk(kid))
    return out
