"""`kind = "plugin"`: endpoints from a DiscoverySource plugin (fastmesh/plugins/api.py), an async iterator of sets.

Each set the plugin yields is checked like a file's (IP literals, weights, no address twice) and published; a bad
set or an exception is a failure like any source's (counted, logged once per message, the last good set stays),
and the watch is started again after a pause that doubles up to 30 s (back to 1 s once a set comes through).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastmesh.config.values import format_address
from fastmesh.config.schema import Endpoint
from fastmesh.discovery.base import Source, SourceError, parse_endpoint, unique
from fastmesh.plugins import registry

log = logging.getLogger("fastmesh.discovery")
RESTART_FIRST = 1.0            # seconds before a failed or finished watch is started again...
RESTART_MAX = 30.0             # ...doubling up to this


def endpoints_of(items: Any, where: str) -> list[Endpoint]:
    """A set as a plugin yields it: an iterable of "ip:port", ("ip", port) or {"address": ..., "weight": N}."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise SourceError("parse", f"{where}: expected an iterable of endpoints, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int):
            item = format_address(item[0], item[1])
        out.append(parse_endpoint(dict(item) if isinstance(item, Mapping) else item, f"{where}: endpoint {i}"))
    return unique(out, where)


class PluginSource(Source):
    kind = "plugin"

    def target(self) -> str:
        assert self.cfg.plugin is not None
        return self.cfg.plugin

    def make(self) -> Any:
        assert self.cfg.plugin is not None
        return registry.instantiate(self.cfg.plugin, "discovery", self.cfg.config)

    async def resolve(self) -> list[Endpoint]:
        plugin = stream = None
        try:
            plugin = self.make()
            stream = plugin.watch()
            return endpoints_of(await anext(stream), self.state.target)
        except StopAsyncIteration:
            raise SourceError("ended", f"{self.state.target}: the watch ended without a set") from None
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError("plugin", f"{self.state.target}: {type(exc).__name__}: {exc}") from None
        finally:
            await _close(stream, plugin)

    async def run(self) -> None:
        pause = RESTART_FIRST
        while True:
            plugin = stream = None
            try:
                plugin = self.make()
                stream = plugin.watch()
                async for items in stream:
                    try:
                        endpoints = endpoints_of(items, self.state.target)
                    except SourceError as exc:
                        self.fail(exc.kind, str(exc))
                        continue
                    self.publish(endpoints)
                    pause = RESTART_FIRST
                self.fail("ended", f"{self.state.target}: the watch ended; starting it again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.fail("plugin", f"{type(exc).__name__}: {exc}")
            finally:
                await _close(stream, plugin)
            self.state.watch_restarts += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX)


async def _close(stream: Any, plugin: Any) -> None:
    """Finish the plugin's generator and call its close(), whatever happens to either."""
    try:
        if stream is not None and hasattr(stream, "aclose"):
            await stream.aclose()
    except Exception:
        log.exception("discovery plugin: closing its watch failed")
    close = getattr(plugin, "close", None)
    if close is not None:
        try:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("discovery plugin: close() failed")
