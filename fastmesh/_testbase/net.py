"""Free ports on 127.0.0.1 and small socket helpers for tests."""
from __future__ import annotations

import socket


_handed_out: set[int] = set()     # ports free_port() has returned in this process


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bound then released), never one this process was given before: the
    kernel may hand a just-released port out again, and a test taking two in a row would get the same one."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def tcp_config(listen_port: int, endpoints: list[str], **listener_opts: object) -> str:
    """A one-listener, one-cluster TOML config, for tests."""
    extra = "".join(f"{k} = {_toml(v)}\n" for k, v in listener_opts.items() if not k.startswith("cluster_"))
    cluster_extra = "".join(f"{k[8:]} = {_toml(v)}\n" for k, v in listener_opts.items() if k.startswith("cluster_"))
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return (f'[[listeners]]\nname = "tcp-in"\nlisten = "127.0.0.1:{listen_port}"\ncluster = "backend"\n{extra}'
            f'[clusters.backend]\nendpoints = [{eps}]\n{cluster_extra}')


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return f'"{v}"'
