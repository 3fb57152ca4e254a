"""Embed fastmesh in your own asyncio program: a load balancer in front of three demo backends.

    python examples/embed.py            # proxy on 127.0.0.1:4150, backends on 9101-9103

The config is built from Python objects here; Proxy.from_file("x.toml") and Proxy.from_toml(text) work too.
"""
import asyncio
import sys

import uvloop

from fastmesh import Proxy
from fastmesh.config.schema import Cluster, Config, Endpoint, Listener
from fastmesh.process.demo import start_demo


async def main(port: int, backend_ports: list[int]) -> None:
    backends = [Endpoint("127.0.0.1", p) for p in backend_ports]
    demo = await start_demo(backends)          # stand-ins for your services
    config = Config(
        listeners=[Listener(name="embedded", host="127.0.0.1", port=port, cluster="services")],
        clusters={"services": Cluster(name="services", endpoints=backends, balancer="round_robin")},
    )
    async with Proxy(config) as proxy:         # binds on this loop; leaving the block drains and stops it
        host, bound_port = proxy.addresses["embedded"]
        for _ in range(len(backends)):
            reader, writer = await asyncio.open_connection(host, bound_port)
            writer.write(b"GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n")
            response = await reader.read()
            print(response.partition(b"\r\n\r\n")[2].decode().strip())
            writer.close()
    await demo.close()


if __name__ == "__main__":
    ports = [int(p) for p in sys.argv[1:]] or [4150, 9101, 9102, 9103]
    uvloop.run(main(ports[0], ports[1:]))
