"""`kind = "file"`: endpoints from a JSON or TOML file, re-read when it changes (inotify, else mtime polling).

JSON: an array of endpoints, or {"endpoints": [...]}; TOML: `endpoints = [...]`. Each endpoint is "ip:port" or
{address, weight, zone, metadata}. The file is applied whole or not at all: one that does not parse keeps the
last good set. Writers should replace it atomically (write elsewhere, rename into place); a half-written file
is refused and the next change event reads it again.
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from fastmesh.config.schema import Endpoint
from fastmesh.discovery.base import Source, SourceError, parse_endpoints
from fastmesh.filewatch import DirWatch
from fastmesh.gcpause import collector_paused


def parse_file(data: bytes, name: str) -> list[Endpoint]:
    """The endpoints in a file's bytes; SourceError("parse", why) when it is not a valid endpoints file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError("parse", f"{name}: not UTF-8") from None
    doc: Any
    if name.endswith(".toml"):
        import tomllib      # only for a TOML endpoints file (config/load.py: TOML_READER)
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SourceError("parse", f"{name}: invalid TOML ({exc})") from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise SourceError("parse", f"{name}: invalid JSON ({exc})") from None
    if isinstance(doc, dict) and set(doc) == {"endpoints"}:
        doc = doc["endpoints"]
    if not isinstance(doc, list):
        raise SourceError("parse", f"{name}: expected an array of endpoints (or a table with only \"endpoints\")")
    return parse_endpoints(doc, name)


class FileSource(Source):
    kind = "file"

    def target(self) -> str:
        assert self.cfg.path is not None
        return os.path.join(self.base_dir, self.cfg.path)

    def parse(self, data: bytes, name: str) -> list[Any]:
        """What the file's bytes hold; SourceError("parse", why) when they do not."""
        return parse_file(data, name)

    def read(self) -> list[Any]:
        path = self.state.target
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise SourceError("missing", f"{path}: no such file") from None
        except OSError as exc:
            raise SourceError("read", f"{path}: {exc.strerror or exc}") from None
        return self.parse(data, os.path.basename(path))

    async def resolve(self) -> list[Any]:
        return self.read()

    async def run(self) -> None:
        changed = asyncio.Event()
        watch = DirWatch(os.path.dirname(self.state.target) or ".", changed)
        seen: tuple[int, int, int] | None = None
        try:
            while True:
                try:
                    st = os.stat(self.state.target)
                    stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
                except OSError:
                    stamp = None
                if stamp != seen or stamp is None:
                    with collector_paused():        # (fastmesh/gcpause.py: 10,000 endpoints read and assigned slots)
                        try:
                            endpoints = self.read()
                        except SourceError as exc:
                            if stamp != seen:       # a broken file is reported once per change, not per poll
                                self.fail(exc.kind, str(exc))
                        else:
                            self.publish(endpoints)
                    seen = stamp
                changed.clear()
                try:
                    # inotify wakes us at once; the poll catches what it cannot see (no inotify, NFS).
                    await asyncio.wait_for(changed.wait(), self.cfg.interval)
                except TimeoutError:
                    pass
        finally:
            watch.close()
