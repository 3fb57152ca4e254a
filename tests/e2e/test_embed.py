"""The embedding example runs as documented, and a Python-built config is validated like a file."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastmesh import ConfigError, Proxy
from fastmesh._testbase.net import free_ports
from fastmesh.config.schema import Cluster, Config, Endpoint, Listener


def test_embed_example_balances_across_backends():
    ports = free_ports(4)
    repo = Path(__file__).parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "examples/embed.py", *map(str, ports)], capture_output=True,
                         text=True, timeout=60, check=True, cwd=repo, env=env).stdout.splitlines()
    assert sorted(out) == sorted(f"hello from demo backend {i} (127.0.0.1:{p})" for i, p in
                                 enumerate(ports[1:], start=1))


def test_python_built_config_is_validated():
    config = Config(listeners=[Listener(name="in", host="127.0.0.1", port=4999, cluster="missing")],
                    clusters={"c": Cluster(name="c", endpoints=[Endpoint("127.0.0.1", 1)], balancer="nope")})
    with pytest.raises(ConfigError) as info:
        Proxy(config)
    text = str(info.value)
    assert 'clusters.c.balancer: expected one of the balancers' in text
    assert 'listeners[0].cluster: expected one of the clusters ["c"], got "missing"' in text
