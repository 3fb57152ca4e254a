"""Real discovery servers for tests, on loopback ports: Debian's dnsmasq (records from files, re-read on SIGHUP)
and etcd (a temporary data dir), each started and ended by pid, with helpers to change their records."""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from fastmesh._testbase.net import free_port, free_ports

WAIT = 15.0                 # seconds a server gets to come up


def missing(binary: str) -> str | None:
    """Why a test needing `binary` must skip (None when it is there); ci/test.sh installs it from Debian."""
    if shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}"):
        return None
    return f"{binary} is not installed (Debian: apt-get install {'etcd-server' if binary == 'etcd' else binary})"


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Dnsmasq:
    """dnsmasq answering for `domain` only: A/AAAA records from a hosts file, SRV records from its config file.
    `set_hosts` rewrites the hosts file and signals SIGHUP (dnsmasq re-reads it); SRV records are read at start,
    so `set_srv` restarts it on the same port."""

    def __init__(self, tmp: Path, domain: str = "svc.test") -> None:
        self.tmp, self.domain = tmp, domain
        self.port = free_port()
        self.hosts = tmp / "dns-hosts"
        self.conf = tmp / "dnsmasq.conf"
        self.hosts.write_text("")
        self.conf.write_text("")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # TTL 0 on local records: fastmesh re-resolves at its min_ttl floor, so tests need not wait out TTLs.
        argv = [_binary("dnsmasq"), "--keep-in-foreground", f"--conf-file={self.conf}", f"--port={self.port}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                f"--addn-hosts={self.hosts}", f"--local=/{self.domain}/", "--local-ttl=0", "--pid-file=",
                "--log-facility=-", "--user=root" if os.geteuid() == 0 else "--user=" + os.environ.get("USER", "")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.tmp / "dnsmasq.log", "ab"))
        deadline = time.monotonic() + WAIT
        while not self._answers():
            assert self.proc.poll() is None, (self.tmp / "dnsmasq.log").read_text()
            assert time.monotonic() < deadline, "dnsmasq did not come up"
            time.sleep(0.05)

    def _answers(self) -> bool:
        """Whether it answers a query on its UDP port (any answer will do)."""
        query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x01x\x00" + b"\x00\x01\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(query, ("127.0.0.1", self.port))
                return bool(s.recv(512))
            except OSError:
                return False

    def set_hosts(self, records: dict[str, list[str]]) -> None:
        """Replace the A/AAAA records (name -> addresses) and have dnsmasq re-read them."""
        tmp = self.hosts.with_suffix(".new")
        tmp.write_text("".join(f"{ip} {name}\n" for name, ips in records.items() for ip in ips))
        os.replace(tmp, self.hosts)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def set_srv(self, name: str, records: list[tuple[str, int, int, int]]) -> None:
        """SRV records (target, port, priority, weight) for name; restarts a running dnsmasq to load them."""
        self.conf.write_text("".join(f"srv-host={name},{target},{port},{priority},{weight}\n"
                                     for target, port, priority, weight in records))
        if self.proc is not None:
            self.stop()
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Etcd:
    """A single-member etcd with a temporary data dir, on free loopback ports; its JSON gateway is at /v3/."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port, self.peer = free_ports(2)
        self.data = tmp / "etcd-data"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer}"
        argv = [_binary("etcd"), "--name", "test", "--data-dir", str(self.data), "--listen-client-urls", client,
                "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
                peer, "--initial-cluster", f"test={peer}", "--log-level", "warn"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.tmp / "etcd.log", "ab"))
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.call("/v3/kv/range", {"key": _b64(b"/")})
                return
            except OSError:
                assert self.proc.poll() is None, (self.tmp / "etcd.log").read_text()
                assert time.monotonic() < deadline, "etcd did not come up"
                time.sleep(0.1)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"http://{self.address}{path}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return dict(json.loads(answer.read()))

    def put(self, key: str, value: Any) -> int:
        """Set key to value (JSON-encoded unless it is a str); the revision it made."""
        text = value if isinstance(value, str) else json.dumps(value)
        answer = self.call("/v3/kv/put", {"key": _b64(key.encode()), "value": _b64(text.encode())})
        return int(answer["header"]["revision"])

    def delete(self, key: str) -> int:
        return int(self.call("/v3/kv/deleterange", {"key": _b64(key.encode())})["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
