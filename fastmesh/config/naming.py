"""The naming table's language: rules that map logical names to clusters (Linkerd 1's dtabs, made readable).

A rule is `PREFIX => DESTINATION`:
  - PREFIX is a path of segments, `/svc/users`; a `*` segment matches any one segment (`/svc/*/v2`).
  - DESTINATION is an expression: alternatives separated by `|` (the first that resolves to a live cluster wins),
    each one a term or a weighted split `0.9 * /cluster/users-v1 & 0.1 * /cluster/users-v2` (`&` binds tighter
    than `|`; a term without a weight has weight 1); a term is a path, `~` (nothing: the fallback goes on), `!`
    (failure: the fallback stops, no earlier rule is tried) or a parenthesised expression.
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

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CLUSTER_PREFIX = "cluster"          # /cluster/NAME: a concrete cluster (the end of a lookup)
SERVICE_PREFIX = "/svc/"            # a route's service = "users" is the name /svc/users
MAX_DEPTH = 16                      # lookups inside one resolution: deeper is taken for a loop
MAX_SPLIT = 32                      # branches of one weighted split (the core keeps their results on its stack)
MAX_NESTING = 32                    # parentheses inside each other in one destination
MAX_RULES = 1000
OVERRIDE_WHERE = "fastmesh-naming"  # where an override's rules come from, in messages

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.:@-]+")


class NamingError(ValueError):
    """A table that does not parse: the message says where (rule number, text) and what was expected."""


# A destination as parsed: ("path", segments) | ("neg",) for `~` | ("fail",) for `!` | ("alt", (expr, ...)) for
# `a | b` | ("split", ((weight, expr), ...)) for `W * a & W * b`.
Expr = tuple  # type: ignore[type-arg]


@dataclass(frozen=True)
class Rule:
    """One parsed rule: prefix segments (`*` matches any one) and the destination's expression."""
    prefix: tuple[str, ...]
    dest: Expr                      # the destination's expression (see Expr)
    text: str                       # the rule as normalised text (what /naming and explain show)


@dataclass
class Node:
    """A step of a resolution: what the core walks per request and what explain shows.

    kind: "cluster" (a concrete cluster, index into the cluster list, or a neg when the cluster is unknown),
    "alt" (the first child that resolves wins), "split" (a child drawn by weight among the live ones),
    "neg" (resolves to nothing: `~`, an unknown name; fallback continues), "fail" (`!`: the resolution fails, no
    fallback is tried past it). `label` says why the step exists (the path looked up, the rule applied).
    """
    kind: str
    label: str
    children: list[Node] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    cluster: int = -1
    wants: str = ""                 # on a "neg" for a cluster a template would make: its name (discovery/templates.py)


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


_TOKEN_RE = re.compile(r"\s*(?:(?P<path>/[^\s|&()~!]*)|(?P<num>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)|(?P<op>[|&()*~!]))")


class _Parser:
    """A destination's text -> Expr, by recursive descent: `|` binds loosest, then `&`, then `W *`; `(...)` groups.
    Errors name the rule (`where`) and the column of the destination where the parser stopped."""

    def __init__(self, text: str, where: str, column: int) -> None:
        self.text, self.where, self.column = text, where, column
        self.tokens: list[tuple[str, str, int]] = []
        at = 0
        while at < len(text):
            if not text[at:].strip():
                break
            m = _TOKEN_RE.match(text, at)
            if m is None or m.end() == at:         # the parser says what it expected here
                start = len(text[at:]) - len(text[at:].lstrip()) + at
                self.tokens.append(("bad", text[start:].strip(), start))
                break
            kind = m.lastgroup or "op"
            self.tokens.append((kind, m[kind], m.start(kind)))
            at = m.end()
        self.i = 0
        self.depth = 0                              # parentheses open around the token at i

    def fail(self, at: int, why: str) -> None:
        raise NamingError(f"{self.where}: column {self.column + at + 1}: {why}")

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "", len(self.text))

    def parse(self) -> Expr:
        if not self.tokens:
            self.fail(0, "expected a destination: a path, '~', '!' or '(...)'")
        out = self.alt()
        kind, value, at = self.peek()
        if kind != "end":
            self.fail(at, f"expected '|', '&' or the end of the rule, got {self.text[at:].strip()!r}")
        return out

    def alt(self) -> Expr:
        branches = [self.split()]
        while self.peek()[1] == "|":
            self.i += 1
            branches.append(self.split())
        flat: list[Expr] = []
        for b in branches:
            flat.extend(b[1] if b[0] == "alt" else (b,))
        return flat[0] if len(flat) == 1 else ("alt", tuple(flat))

    def split(self) -> Expr:
        start = self.peek()[2]
        terms = [self.term()]
        while self.peek()[1] == "&":
            self.i += 1
            terms.append(self.term())
        if len(terms) > MAX_SPLIT:
            self.fail(start, f"at most {MAX_SPLIT} branches in one split, got {len(terms)}")
        if len(terms) == 1:
            return terms[0][1]
        return ("split", tuple(terms))

    def term(self) -> tuple[float, Expr]:
        kind, value, at = self.peek()
        weight = 1.0
        if kind == "num":
            self.i += 1
            if self.peek()[1] != "*":
                self.fail(self.peek()[2], f"expected '*' after the weight {value}")
            self.i += 1
            weight = float(value)
            if weight <= 0:
                self.fail(at, f"weights must be above 0, got {value}")
        return weight, self.atom()

    def atom(self) -> Expr:
        kind, value, at = self.peek()
        if kind == "path":
            self.i += 1
            return ("path", _path(value, f"{self.where}: column {self.column + at + 1}: destination", wildcard=False))
        if value in ("~", "!"):
            self.i += 1
            return ("neg",) if value == "~" else ("fail",)
        if value == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                self.fail(at, f"at most {MAX_NESTING} parentheses inside each other")
            self.i += 1
            inner = self.alt()
            self.depth -= 1
            if self.peek()[1] != ")":
                self.fail(self.peek()[2], f"expected ')' closing the '(' at column {self.column + at + 1}")
            self.i += 1
            return inner
        got = "the end of the rule" if kind == "end" else repr(self.text[at:].strip())
        if kind == "bad" and value[:1].isalnum():
            self.fail(at, f"destination: expected a path starting with '/', got {got}")
        if kind == "end" or value in ("|", "&", ")"):
            self.fail(at, f"expected a destination path on each side of '|' and '&' (or '~', '!', '(...)'), got "
                          f"{got}")
        self.fail(at, f"expected a path, '~', '!' or '(', got {got}")
        raise AssertionError


def expr_text(e: Expr, inner: bool = False) -> str:
    """An Expr as normalised text: `&` inside `|` needs no parentheses, `|` inside `&` does."""
    if e[0] == "path":
        return path_text(e[1])
    if e[0] == "neg":
        return "~"
    if e[0] == "fail":
        return "!"
    if e[0] == "alt":
        text = " | ".join(expr_text(k) for k in e[1])
        return f"({text})" if inner else text
    return " & ".join(f"{_fmt_weight(w)} * {expr_text(k, inner=True)}" for w, k in e[1])


def parse_rule(text: str, where: str) -> Rule:
    """One rule; NamingError naming `where`, the column and what was expected."""
    prefix_text, arrow, dest_text = text.partition("=>")
    if not arrow:
        raise NamingError(f"{where}: expected 'PREFIX => DESTINATION', got {text.strip()!r}")
    prefix = _path(prefix_text, f"{where}: prefix", wildcard=True)
    dest = _Parser(dest_text, f"{where}", len(prefix_text) + 2).parse()
    return Rule(prefix, dest, f"{path_text(prefix)} => {expr_text(dest)}")


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


def template_for(name: str, patterns: Iterable[str]) -> str | None:
    """The first cluster template pattern (`*` any run of characters) that `name` matches, or None."""
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def resolve(rules: Sequence[Rule], name: str, clusters: Sequence[str], templates: Iterable[str] = ()) -> Node:
    """The resolution tree of a name: the core walks it per request (liveness and weights), explain shows it.
    A `/cluster/NAME` that is no cluster but matches one of `templates` resolves to nothing and is marked as
    wanted (Node.wants), so that the supervisor makes the cluster (discovery/templates.py)."""
    index = {c: i for i, c in reversed(list(enumerate(clusters)))}
    return _lookup(rules, _path(name, "name", wildcard=False), index, 0, tuple(templates))


def _lookup(rules: Sequence[Rule], path: tuple[str, ...], index: dict[str, int], depth: int,
            templates: tuple[str, ...] = ()) -> Node:
    label = path_text(path)
    if path[:1] == (CLUSTER_PREFIX,):
        if len(path) < 2:
            return Node("neg", f"{label}: /cluster needs a cluster name")
        name = path[1]
        if name not in index:
            made = template_for(name, templates)
            if made is not None:
                return Node("neg", f"{label}: no cluster {name!r} yet (template {made!r} makes it)", wants=name)
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
        dest = _dest(rules, rule.dest, rest, index, depth, templates)
        kids = dest.children if dest.kind == "alt" else [dest]
        tries.append(Node("alt", f"rule {i} ({rule.text}): {label} -> {_with_rest(rule.dest, rest)}", kids))
    if not tries:
        return Node("neg", f"{label}: no rule matches")
    return Node("alt", label, tries)


def _with_rest(e: Expr, rest: tuple[str, ...]) -> str:
    """A destination's text with the rest of the name appended to its paths."""
    return expr_text(_append(e, rest))


def _append(e: Expr, rest: tuple[str, ...]) -> Expr:
    if e[0] == "path":
        return ("path", e[1] + rest)
    if e[0] == "alt":
        return ("alt", tuple(_append(k, rest) for k in e[1]))
    if e[0] == "split":
        return ("split", tuple((w, _append(k, rest)) for w, k in e[1]))
    return e


def _dest(rules: Sequence[Rule], e: Expr, rest: tuple[str, ...], index: dict[str, int], depth: int,
          templates: tuple[str, ...]) -> Node:
    """The tree of one destination expression, its paths looked up with `rest` appended."""
    if e[0] == "path":
        return _lookup(rules, e[1] + rest, index, depth + 1, templates)
    if e[0] == "neg":
        return Node("neg", "~: nothing here (fallback continues)")
    if e[0] == "fail":
        return Node("fail", "!: fails here (no fallback)")
    if e[0] == "alt":
        return Node("alt", _with_rest(e, rest), [_dest(rules, k, rest, index, depth, templates) for k in e[1]])
    return Node("split", _with_rest(e, rest), [_dest(rules, k, rest, index, depth, templates) for _, k in e[1]],
                [w for w, _ in e[1]])


def names_nothing(node: Node) -> bool:
    """Whether a tree can reach no cluster, no cluster a template makes and no `!` either (a typo or a
    half-written table, not a choice)."""
    return node.kind != "fail" and not node.wants and not clusters_named(node) \
        and all(names_nothing(k) for k in node.children)


def wanted(node: Node) -> list[str]:
    """The names of the clusters templates would make that a tree reaches, in the order it prefers them."""
    out = [node.wants] if node.wants else []
    for kid in node.children:
        out.extend(n for n in wanted(kid) if n not in out)
    return out


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
    Kind codes: 0 neg, 1 cluster, 2 alt, 3 split, 4 fail (_core/naming.pxd's NodeKind)."""
    codes = {"neg": 0, "cluster": 1, "alt": 2, "split": 3, "fail": 4}
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
