"""`kind = "dns"` (A/AAAA records, one port for all) and `kind = "dns_srv"` (SRV: port and weight per record) through
aiodns/pycares (c-ares), which hands back each record's TTL.

Timing: the name is looked up again after the answer's smallest TTL, kept within [min_ttl, max_ttl] and shortened
by up to 10% at random so that instances started together do not ask together. Failures are of two sorts:
  - the server did not answer usefully (timeout, SERVFAIL, refused): the last good set stays, however long that
    lasts (Envoy's choice: a DNS outage must not empty a cluster), and the lookup is retried after min_ttl;
  - the server said the name has no such records (NXDOMAIN, or an answer without any): the last good set stays
    for `hold` (HAProxy holds 30 s), then the cluster is emptied. Looked up again meanwhile, so a name that
    comes back within the hold never empties the cluster.
SRV priorities are tiers: every record becomes an endpoint carrying its priority, and the data plane picks only
from the lowest priority value that has an eligible endpoint (healthy, not ejected, not marked down): the next
tier serves only while the one before it has none (core Cluster, OUT_STANDBY). /clusters lists the records of
the other tiers as standby. An address listed in two tiers counts in the more preferred one.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiodns
import pycares

from fastmesh.config.values import MAX_WEIGHT, format_address
from fastmesh.config.schema import Endpoint
from fastmesh.discovery.base import Source, SourceError, canonical_ip

JITTER = 0.1                # share of the wait taken off at random
_NO_RECORDS = (pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA)
_ERROR_KINDS = {pycares.errno.ARES_ETIMEOUT: "timeout", pycares.errno.ARES_ESERVFAIL: "servfail",
                pycares.errno.ARES_ECONNREFUSED: "unreachable", pycares.errno.ARES_EREFUSED: "refused",
                pycares.errno.ARES_ENOTFOUND: "nxdomain", pycares.errno.ARES_ENODATA: "nodata"}


class NoRecords(SourceError):
    """The server answered: the name has no records of the type asked (NXDOMAIN or an empty answer)."""


def _error(exc: aiodns.error.DNSError, name: str, qtype: str) -> SourceError:
    code = exc.args[0] if exc.args else 0
    kind = _ERROR_KINDS.get(code, "error")
    why = pycares.errno.strerror(code) if isinstance(code, int) else str(exc)
    message = f"{qtype} {name}: {why if isinstance(why, str) else why.decode(errors='replace')}"
    return NoRecords(kind, message) if code in _NO_RECORDS else SourceError(kind, message)


class DnsSource(Source):
    """Both DNS kinds: they differ only in `lookup`."""
    kind = "dns"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = self.cfg.kind
        self.state.kind = self.kind
        self._resolver: aiodns.DNSResolver | None = None

    def target(self) -> str:
        assert self.cfg.name is not None
        return self.cfg.name

    def resolver(self) -> aiodns.DNSResolver:
        if self._resolver is None:
            servers = [format_address(host, port) for host, port in self.cfg.resolvers] or None
            self._resolver = aiodns.DNSResolver(nameservers=servers, timeout=self.cfg.timeout, tries=1)
        return self._resolver

    async def query(self, name: str, qtype: str) -> list[Any]:
        try:
            result = await asyncio.wait_for(self.resolver().query_dns(name, qtype), self.cfg.timeout + 1.0)
        except aiodns.error.DNSError as exc:
            raise _error(exc, name, qtype) from None
        except TimeoutError:
            raise SourceError("timeout", f"{qtype} {name}: no answer within {self.cfg.timeout:g}s") from None
        return list(result.answer) + list(result.additional)

    async def addresses(self, name: str) -> tuple[list[str], float]:
        """The A and AAAA addresses of name and their smallest TTL; NoRecords when it has neither."""
        answers = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, NoRecords):
                raise answer
        records = [r for answer in answers if not isinstance(answer, BaseException) for r in answer
                   if r.type in (pycares.QUERY_TYPE_A, pycares.QUERY_TYPE_AAAA)
                   and r.name.rstrip(".").lower() == name.rstrip(".").lower()]
        if not records:
            first = next(a for a in answers if isinstance(a, NoRecords))
            raise first
        return [canonical_ip(r.data.addr) for r in records], min(r.ttl for r in records)

    async def lookup(self) -> tuple[list[Endpoint], float]:
        """The endpoint set and the TTL it is good for; NoRecords or SourceError when there is none."""
        name = self.target()
        if self.kind == "dns":
            assert self.cfg.port is not None
            addresses, ttl = await self.addresses(name)
            return [Endpoint(ip, self.cfg.port) for ip in sorted(set(addresses))], ttl
        records = await self.query(name, "SRV")
        srv = [r for r in records if r.type == pycares.QUERY_TYPE_SRV]
        if not srv:
            raise NoRecords("nodata", f"SRV {name}: no SRV records in the answer")
        extra: dict[str, list[tuple[str, int]]] = {}   # target -> addresses given in the additional section
        for r in records:
            if r.type in (pycares.QUERY_TYPE_A, pycares.QUERY_TYPE_AAAA):
                extra.setdefault(r.name.rstrip(".").lower(), []).append((canonical_ip(r.data.addr), r.ttl))
        tiers = sorted({r.data.priority for r in srv})
        self.state.detail["standby"] = sorted(f"{r.data.target}:{r.data.port} (priority {r.data.priority})"
                                              for r in srv if r.data.priority != tiers[0])
        ttl = min(r.ttl for r in srv)
        endpoints: dict[tuple[str, int], Endpoint] = {}
        for r in sorted(srv, key=lambda r: r.data.priority):
            target = r.data.target.rstrip(".").lower()
            if target in extra:
                ips, ttl = [ip for ip, _ in extra[target]], min([ttl] + [t for _, t in extra[target]])
            else:
                ips, target_ttl = await self.addresses(target)
                ttl = min(ttl, target_ttl)
            for ip in ips:
                weight = max(1, min(MAX_WEIGHT, r.data.weight))
                endpoints.setdefault((ip, r.data.port), Endpoint(ip, r.data.port, weight, r.data.priority))
        return list(endpoints.values()), ttl

    async def resolve(self) -> list[Endpoint]:
        return (await self.lookup())[0]

    def wait(self, ttl: float) -> float:
        wait = min(max(ttl, self.cfg.min_ttl), self.cfg.max_ttl)
        return wait * (1.0 - JITTER * random.random())

    async def run(self) -> None:
        missing_since: float | None = None         # when the records went missing (NXDOMAIN, empty answer)
        try:
            while True:
                try:
                    endpoints, ttl = await self.lookup()
                except NoRecords as exc:
                    now = time.monotonic()
                    missing_since = now if missing_since is None else missing_since
                    left = self.cfg.hold - (now - missing_since)
                    if left <= 0 or not self.state.updates:
                        if self.state.endpoints or not self.state.updates:
                            self.fail(exc.kind, f"{exc}: the cluster is now empty")
                            self.publish([])
                        delay = self.wait(self.cfg.min_ttl)
                    else:
                        self.fail(exc.kind, f"{exc}: keeping the last good set for up to {self.cfg.hold:g}s")
                        delay = min(self.wait(self.cfg.min_ttl), left)
                except SourceError as exc:
                    self.fail(exc.kind, str(exc))
                    delay = self.wait(self.cfg.min_ttl)
                else:
                    missing_since = None
                    self.state.detail["ttl"] = ttl
                    self.publish(endpoints)
                    delay = self.wait(ttl)
                self.state.detail["next_lookup_in"] = round(delay, 3)
                await asyncio.sleep(delay)
        finally:
            if self._resolver is not None:
                self._resolver.cancel()
