"""The debug build's lifetime counters see connection objects come and go (the leak check in conftest.py relies
on them); in a release build they stay at zero."""
import asyncio
import gc

import pytest

from fastmesh import Proxy
from fastmesh._core import build_info
from fastmesh._core.debug import live_objects
from fastmesh._testbase.backends import echo, start_backends
from fastmesh._testbase.net import free_port, tcp_config


@pytest.mark.skipif(not build_info.DEBUG, reason="lifetime counters exist in debug builds (setup.py --debug-core)")
def test_a_relay_is_counted_while_open_and_gone_after() -> None:
    async def main() -> None:
        (backend,) = await start_backends(1, echo)
        async with Proxy.from_toml(tcp_config(free_port(), [backend.address])) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.addresses["tcp-in"])
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert live_objects()["tcp_relay"] >= 1
            writer.close()
        await backend.stop()

    before = live_objects()["tcp_relay"]
    asyncio.run(main())
    gc.collect()
    assert live_objects()["tcp_relay"] == before


@pytest.mark.skipif(build_info.DEBUG, reason="a release build")
def test_release_build_counts_nothing() -> None:
    assert set(live_objects().values()) == {0}
