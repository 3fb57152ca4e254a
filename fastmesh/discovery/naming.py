"""The naming table watched in a file or at one etcd key: the same watches as the endpoint sources, other contents.

The table is text (config/naming.py's rules, `;` or new lines between them). It is applied whole or not at all:
a table that does not parse keeps the last good one, and the failure is logged, counted and shown in /naming with
the file (or key), the rule and what was expected. A deleted etcd key or a missing file keeps the last good table
too: routing never goes dark because the source did.
"""
from __future__ import annotations

from typing import Any

from fastmesh.config import naming as lang
from fastmesh.config.schema import Discovery, NamingSource
from fastmesh.discovery.base import Publish, Source, SourceError
from fastmesh.discovery.etcd import EtcdSource, b64, unb64
from fastmesh.discovery.file import FileSource

OWNER = "naming"                                # the log lines' "naming table: ..."


def parse_text(data: bytes, where: str) -> list[str]:
    """The rules of a table's bytes, normalised; SourceError("parse", why) when it is not a valid table."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError("parse", f"{where}: not UTF-8") from None
    try:
        return [rule.text for rule in lang.parse_table(text, where)]
    except lang.NamingError as exc:
        raise SourceError("parse", str(exc)) from None


class _Table:
    """What both naming sources change in their endpoint-source parent: order kept, words in the logs."""
    owner = OWNER
    items = "rule(s)"

    def arrange(self, found: list[Any]) -> list[Any]:
        return list(found)


class NamingFileSource(_Table, FileSource):
    def parse(self, data: bytes, name: str) -> list[Any]:
        return parse_text(data, name)


class NamingEtcdSource(_Table, EtcdSource):
    """The table is the value of one key (the source's `prefix` holds the key: no range end, one key)."""

    def _key_range(self) -> dict[str, str]:
        return {"key": b64(self.prefix)}

    def _value(self, key: bytes, value_b64: str) -> Any:
        try:
            return parse_text(unb64(value_b64), key.decode(errors="replace"))
        except SourceError as exc:
            self.fail(exc.kind, str(exc))
            return None

    def publish_keys(self) -> None:
        rules: Any = self.keys.get(self.prefix)       # this source keeps a table (list[str]) per key
        if rules is None:
            self.fail("missing", f"{self.prefix.decode(errors='replace')}: no such key")
            return
        self.publish(rules)

    async def resolve(self) -> list[Any]:
        last: SourceError | None = None
        for _ in self.members:
            try:
                answer = await self._http().call("/v3/kv/range", self._key_range())
            except SourceError as exc:
                last = exc
                self.member += 1
                continue
            kvs = answer.get("kvs", [])
            if not kvs:
                raise SourceError("missing", f"{self.prefix.decode(errors='replace')}: no such key")
            return parse_text(unb64(kvs[0].get("value", "")), self.prefix.decode(errors="replace"))
        assert last is not None
        raise last


def make_naming_source(cfg: NamingSource, base_dir: str, publish: Publish) -> Source:
    """The source for a [naming] source table (its settings in the shape the endpoint sources read)."""
    spec = Discovery(kind=cfg.kind, path=cfg.path, interval=cfg.interval, endpoints=list(cfg.endpoints),
                     prefix=cfg.key, timeout=cfg.timeout)
    if cfg.kind == "file":
        return NamingFileSource("table", spec, base_dir, publish)
    return NamingEtcdSource("table", spec, base_dir, publish)
