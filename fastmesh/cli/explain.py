"""`fastmesh explain URL`: ask a running instance's admin server (GET /explain) where a request would go, or
explain from a config file when no instance answers, and print it as a readable table (or --json)."""
from __future__ import annotations

import http.client
import json
import sys
import textwrap
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit

from fastmesh.admin.explain import ExplainError, Question
from fastmesh.cli.stat import StatError, admin_address
from fastmesh.config.values import format_address

TIMEOUT = 10.0      # seconds for the admin request (the supervisor asks every worker)


def main(url: str, method: str, headers: list[str], listener: str | None, client: str | None, admin: str | None,
         config: str | None, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Entry point of `fastmesh explain`; returns the exit code."""
    try:
        q = question(url, method, headers, listener, client)
        where = admin_address(admin, config)
        try:
            data = fetch(where, q)
        except OSError as exc:
            if config is None:
                # Name the address tried and the way to go on without an instance, as a first run needs both.
                raise StatError(f"cannot reach the admin server at {format_address(*where)}: "
                                f"{exc.strerror or exc} (is fastmesh running? give CONFIG to explain from "
                                f"the config alone)") from None
            data = offline(config, q)
    except (StatError, ExplainError) as exc:
        print(f"fastmesh explain: {exc}", file=sys.stderr)
        return 1
    out.write(json.dumps(data, indent=2) + "\n" if as_json else render(data))
    return 0


def question(url: str, method: str, headers: list[str], listener: str | None, client: str | None) -> Question:
    """The Question for a URL (http://host[:port]/path?query) and -H 'name: value' options."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ExplainError(400, f"expected a URL like http://host:port/path, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    pairs = []
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep:
            raise ExplainError(400, f"-H {h!r}: expected 'name: value'")
        pairs.append((name.strip(), value.strip()))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Question(method=method.upper(), host=parts.netloc.rpartition("@")[2], target=target, headers=pairs,
                    listener=listener, port=None if listener else port, client=client)


def fetch(address: tuple[str, int], q: Question) -> dict[str, Any]:
    """GET /explain from the admin server; OSError when it cannot be reached."""
    params: list[tuple[str, str]] = [("method", q.method), ("host", q.host), ("path", q.target)]
    params += [("header", f"{n}:{v}") for n, v in q.headers]
    params += [(k, str(v)) for k, v in (("listener", q.listener), ("port", q.port), ("client", q.client))
               if v is not None]
    host, port = address
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/explain?" + urlencode(params))
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        data: dict[str, Any] = json.loads(body)
    except ValueError:
        raise StatError(f"the admin server answered {response.status} without JSON") from None
    if response.status != 200:
        raise ExplainError(response.status, data.get("message", f"the admin server answered {response.status}"))
    return data


def offline(config: str, q: Question) -> dict[str, Any]:
    from fastmesh.config.load import load_config
    from fastmesh.errors import ConfigError
    from fastmesh.admin.explain import explain_offline
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise StatError(str(exc)) from None
    return explain_offline(cfg, q)


# ---- the table ----

def render(data: dict[str, Any]) -> str:
    """The explanation as text: request, listener, routes, cluster endpoints, the predicted pick and the budget."""
    lines = []
    req, lst = data["request"], data["listener"]
    lines.append(f"request   {req['method']} {req['target']}  host {req['host'] or '-'}"
                 + (f"  headers {'; '.join(req['headers'])}" if req["headers"] else ""))
    lines.append(f"listener  {lst['name']} ({lst['protocol']} on {lst['address']}), chosen by {lst['chosen_by']}")
    if lst.get("tls"):
        lines.append("tls       " + _terminated(lst["tls"]))
    routing = data["routing"]
    if routing.get("note"):
        lines.append(f"routing   {routing['note']}")
    else:
        lines.append(f"routing   on host {routing['host']!r}, path {routing['path']!r}")
        rows = [["#", "CLUSTER", "CONDITIONS", "RESULT"]]
        for r in routing["routes"]:
            cond = "(default)" if r["default"] else _conditions(r["conditions"])
            result = r["result"] if r["result"] == "matched" else f"{r['result']}: {r['reason']}"
            target = r["cluster"] if r.get("service") is None else f"service {r['service']}"
            rows.append([str(r["route"]), target, cond, result])
        lines += _table(rows, indent=2)
    naming = data.get("naming")
    if naming:
        lines.append(f"naming    {naming['service']} is the name {naming['name']}"
                     + (f", with the override {naming['override']!r}" if naming.get("override") else ""))
        lines += ["  " + step for step in naming["steps"]]
        if naming.get("override_note"):
            lines.append("  " + naming["override_note"])
        shares = ", ".join(f"{c} {s:.0%}" for c, s in naming["shares"].items())
        lines.append(f"  shares over 10000 resolutions: {shares or 'none'}")
    filters = data.get("filters")
    if filters:
        lines.append(f"filters   {len(filters)}, in this order (any may answer, edit or reroute the request first)")
        rows = [["#", "PLUGIN", "KIND", "ON FAILURE", "FROM"]]
        for i, f in enumerate(filters):
            if f["async"] or f.get("run") == "thread":
                kind = f"{'async' if f['async'] else 'thread'}, {_seconds(f['timeout'])} timeout"
            else:
                kind = "sync"
            if f.get("response"):
                kind += ", answers too" if f.get("request", True) else ", answers only"
            rows.append([str(i), f["plugin"], kind, "fail" if f["failure_mode"] == "closed" else "go on",
                         f["origin"]])
        lines += _table(rows, indent=2)
    limit = data.get("rate_limit")
    if limit:
        lines.append(f"limit     {limit['limit']} ({limit['buckets']} buckets); over it: 429 with Retry-After; "
                     f"the buckets hold for the instance ({limit['workers']} worker(s) share them)")
    lines.append(f"outcome   {data['outcome']}")
    cluster = data.get("cluster")
    if cluster and "endpoints" in cluster:
        extra = f", hash key {cluster['hash_key']}" if cluster.get("hash_key") else ""
        protocol = "HTTP/2" if cluster.get("protocol") == "h2" else "HTTP/1.1"
        lines.append(f"cluster   {cluster['name']} ({cluster['balancer']}{extra}; {protocol} to the endpoints)")
        if cluster.get("tls"):
            lines.append("tls       " + _originated(cluster["tls"]))
        rows = [["ENDPOINT", "WEIGHT", "STATE", "ACTIVE", "LATENCY", "NOTES"]]
        for e in cluster["endpoints"]:
            latency = f"{e['latency_ms']:.1f}ms" if e["latency_ms"] is not None else "-"
            rows.append([e["address"], str(e["weight"]), e["state"], str(e["active"]), latency, _notes(e)])
        lines += _table(rows, indent=2)
        pick = cluster["would_pick"]
        shares = ", ".join(f"{a} {s:.0%}" for a, s in pick["shares"].items())
        likely = "" if pick["keyed"] else " most likely"
        lines.append(f"would pick {pick['endpoint'] or 'nothing'}{likely} ({pick['how']}; shares over 1000 picks: "
                     f"{shares or 'none'})")
        lines += textwrap.wrap(pick["note"], 110, initial_indent=" " * 10, subsequent_indent=" " * 10)
    p = data.get("policy")
    if p:
        lines.append("budget    " + _budget(p))
        if "limits" in p:
            lines.append("limits    " + _limits(p["limits"]))
    lines.append(f"view      {data.get('view', '')}")
    return "\n".join(lines) + "\n"


def _terminated(tls: dict[str, Any]) -> str:
    """A listener's TLS in one line: certificates, versions, ALPN, client certificates."""
    certs = tls["certificates"]
    parts = [f"terminated: certificate {certs[0]['cert']}"
             + (f" (+{len(certs) - 1} picked by SNI{', strict' if tls['strict_sni'] else ''})" if len(certs) > 1
                else "")]
    parts.append(f"TLS {tls['min_version']}+")
    parts.append("ALPN " + (", ".join(tls["alpn"]) if tls["alpn"] else "none"))
    if tls["require_client_cert"]:
        who = f", identities {', '.join(tls['allow_identities'])}" if tls.get("allow_identities") else ""
        parts.append(f"client certificate required (CA {tls['client_ca']}{who})")
    elif tls["client_ca"]:
        parts.append(f"client certificate checked when sent (CA {tls['client_ca']})")
    return "; ".join(parts)


def _originated(tls: dict[str, Any]) -> str:
    """A cluster's TLS to its endpoints in one line: verification, name, client certificate, versions, ALPN."""
    if tls["verify"]:
        check = f"verified against {tls['ca'] or 'the system CAs'}"
        check += f" as {tls['server_name']}" if tls["server_name"] else " (the endpoint's IP address)"
    else:
        check = "NOT verified (verify = false)"
    parts = [f"to the endpoints: {check}"]
    if tls["client_cert"]:
        parts.append(f"client certificate {tls['client_cert']}")
    parts.append(f"TLS {tls['min_version']}+")
    parts.append("ALPN " + (", ".join(tls["alpn"]) if tls["alpn"] else "none"))
    return "; ".join(parts)


def _conditions(cond: dict[str, Any]) -> str:
    parts = []
    for key, value in cond.items():
        if key == "headers":
            parts += [f"header {k}={v}" for k, v in value.items()]
        elif key == "methods":
            parts.append("methods " + ",".join(value))
        else:
            parts.append(f"{key} {value}")
    return "; ".join(parts) or "(any)"


def _notes(e: dict[str, Any]) -> str:
    notes = []
    if e["ejected_for"] is not None:
        notes.append(f"ejected for {e['ejected_for']:.1f}s more")
    if e["slow_start"] is not None:
        notes.append(f"slow start at {e['slow_start']:.0%} weight")
    if e.get("consecutive_failures"):
        notes.append(_count(e["consecutive_failures"], "consecutive failure"))
    if e.get("connect_failures"):
        notes.append(_count(e["connect_failures"], "failed connect"))
    states = set(e.get("workers", {}).values())
    if len(states) > 1:
        notes.append("workers: " + ", ".join(f"w{n} {s}" for n, s in sorted(e["workers"].items())))
    return "; ".join(notes)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _seconds(value: float | None) -> str:
    return "none" if not value else f"{value:g}s"


def _budget(p: dict[str, Any]) -> str:
    connect = f"connect {_seconds(p['connect_timeout'])} x {p['connect_attempts']} endpoints"
    if "per_try_timeout" not in p:
        return f"{connect}; idle timeout {_seconds(p.get('idle_timeout'))}"
    r = p["retries"]
    client = p["client_deadline_ms"]
    text = (f"{connect}; per try {_seconds(p['per_try_timeout'])} ({p['per_try_timeout_from']}); "
            f"total {_seconds(p['timeout'])}")
    if client is not None:
        text += f"; client deadline {client if isinstance(client, str) else f'{client} ms'}"
    grpc = r.get("grpc_status") or []
    on = ", ".join([*map(str, r["on"]), *(f"grpc-status {name}" for name in grpc)])
    text += (f"; deadline {_seconds(p['deadline'])}; {r['attempts']} attempts on {on}"
             f"; retry budget {r['budget_percent']:g}% + {r['min_per_second']:g}/s for the instance")
    if not p["retryable_method"]:
        text += " (this method is never retried)"
    return text


def _limits(lim: dict[str, Any]) -> str:
    queue = "no queue" if lim["max_pending"] == 0 else f"queue {lim['max_pending']}"
    text = (f"{lim['max_requests']} requests in flight{' (or the adaptive limit, if lower)' if lim['adaptive'] else ''}"
            f", {lim['max_connections']} connections ({queue}), {lim['max_retries']} retries in flight")
    workers = lim["workers"]
    # One worker (or one process) holds the instance's limits alone: nothing counts together then.
    return text + "; for the instance" + (f" ({workers} workers count together)" if workers > 1 else "")


def _table(rows: list[list[str]], indent: int = 0) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [" " * indent + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
