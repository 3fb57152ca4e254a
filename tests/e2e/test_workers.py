"""`fastmesh run` with worker processes: serving, restart after a crash, graceful drain, orphan cleanup, SIGHUP."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastmesh._testbase.net import free_port
from fastmesh._testbase.run import READY, Run, kill_workers, openssl_at_start, openssl_mapped
from fastmesh.process import pageout
from fastmesh.process.supervisor import MAX_BACKOFF, restart_delay

WAIT = 15.0         # seconds any one expected event may take before the test fails


def alive(pid: int) -> bool:
    """True while pid runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Fastmesh(Run):
    """A `fastmesh run` process this test started, its config and its log (stderr, in a file)."""

    def __init__(self, tmp_path: Path, workers: int = 2, drain_timeout: str = "10s") -> None:
        self.port = free_port()
        self.admin_port = free_port()
        backends = ", ".join(f'"127.0.0.1:{free_port()}"' for _ in range(3))
        self.config_text = f"""
workers = {workers}
drain_timeout = "{drain_timeout}"
[admin]
listen = "127.0.0.1:{self.admin_port}"
[[listeners]]
name = "front"
listen = "127.0.0.1:{self.port}"
cluster = "demo"
[clusters.demo]
endpoints = [{backends}]
[demo]
backends = [{backends}]
"""
        super().__init__(tmp_path, self.config_text, WAIT)

    def worker_pids(self) -> dict[str, int]:
        """The latest pid of each worker slot, from the supervisor's log."""
        return {m[1]: int(m[2]) for m in re.finditer(r"(w\d+) started \(pid (\d+)\)", self.log())}

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        """End everything this test started that is still running: the supervisor, then any of its workers."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        # A zombie's cmdline reads empty, so kill_workers never signals one.
        kill_workers(list(self.worker_pids().values()), self.config)


Start = Callable[..., Fastmesh]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start `fastmesh run` (Fastmesh's arguments) and wait until it serves; everything is ended afterwards."""
    started: list[Fastmesh] = []

    def factory(workers: int = 2, drain_timeout: str = "10s") -> Fastmesh:
        fm = Fastmesh(tmp_path, workers, drain_timeout)
        started.append(fm)
        fm.wait_log(READY)
        return fm
    yield factory
    for fm in started:
        fm.cleanup()


def http_get(port: int) -> int:
    """One HTTP request on a fresh connection through the proxy; the number of the demo backend that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer
    match = re.search(rb"\r\nx-demo-backend: (\d+)\r\n", head + b"\r\n")
    assert match, answer
    assert body.startswith(b"hello from demo backend " + match[1])
    return int(match[1])


def open_echo(port: int) -> socket.socket:
    """A proxied connection in the demo backends' echo mode, after one full exchange."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"ping\n")
    assert recv_until(sock, b"ping\n").endswith(b"echoing what you send\nping\n")
    return sock


def recv_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def wait_refused(port: int) -> None:
    """Wait until nothing accepts on port any more (the workers closed their listening sockets)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.05)
    pytest.fail(f"127.0.0.1:{port} still accepts connections")


def test_two_workers_serve_traffic(start: Start) -> None:
    fm = start(workers=2)
    pids = fm.worker_pids()
    assert sorted(pids) == ["w0", "w1"] and len(set(pids.values())) == 2
    fm.wait_log(r"INFO w0 fastmesh\.proxy: listener front on")
    fm.wait_log(r"INFO w1 fastmesh\.proxy: listener front on")
    answers = [http_get(fm.port) for _ in range(12)]
    # Each worker takes the backends in turn, and one of two workers sees at least 6 of 12 connections.
    assert set(answers) == {1, 2, 3}
    assert fm.proc.poll() is None


def test_killed_worker_is_restarted(start: Start) -> None:
    fm = start(workers=2)
    old = fm.worker_pids()["w0"]
    os.kill(old, signal.SIGKILL)
    fm.wait_log(rf"WARNING main fastmesh\.supervisor: w0 \(pid {old}\) exited unexpectedly: killed by signal SIGKILL")
    new = int(fm.wait_log(r"w0 started \(pid (\d+)\)", count=2)[1][1])
    assert new != old and alive(new)
    fm.wait_log(rf"w0 \(pid {new}\) ready")
    assert {http_get(fm.port) for _ in range(9)} == {1, 2, 3}
    assert alive(fm.worker_pids()["w1"])


def test_worker_that_keeps_failing_is_restarted_with_backoff(start: Start) -> None:
    fm = start(workers=1)
    # Killed as soon as it starts, three times: the first restart is immediate, the later ones wait, longer each time.
    for started in (1, 2, 3):
        os.kill(int(fm.wait_log(r"w0 started \(pid (\d+)\)", count=started)[started - 1][1]), signal.SIGKILL)
    fm.wait_log(r"restarting w0 in 0\.5s \(it keeps exiting quickly\)")
    last = int(fm.wait_log(r"w0 started \(pid (\d+)\)", count=4)[3][1])    # left alone: it serves
    fm.wait_log(rf"w0 \(pid {last}\) ready")
    assert http_get(fm.port) in (1, 2, 3)
    assert fm.proc.poll() is None


def test_restart_delay_grows_and_is_capped() -> None:
    delays = [restart_delay(n) for n in range(12)]
    assert delays[:3] == [0.0, 0.0, 0.5]        # a single crash restarts at once
    assert all(a <= b for a, b in zip(delays, delays[1:]))
    assert delays[-1] == MAX_BACKOFF


def test_sigterm_drains_open_connection_until_client_closes(start: Start) -> None:
    fm = start(workers=2, drain_timeout="20s")
    client = open_echo(fm.port)
    began = time.monotonic()
    fm.proc.send_signal(signal.SIGTERM)
    fm.wait_log(r"w0 fastmesh\.worker: received SIGTERM")
    fm.wait_log(r"w1 fastmesh\.worker: received SIGTERM")
    wait_refused(fm.port)                       # new connections are refused...
    for n in range(3):                          # ...while the open one goes on working
        client.sendall(b"still here %d\n" % n)
        assert recv_until(client, b"still here %d\n" % n) == b"still here %d\n" % n
        time.sleep(0.2)
    assert fm.proc.poll() is None
    client.close()
    assert fm.wait_exit() == 0
    assert time.monotonic() - began < 20        # it ended because the client left, not at the drain timeout
    log = fm.log()
    assert re.search(r"w0 \(pid \d+\) stopped: exit code 0", log) and re.search(r"w1 \(pid \d+\) stopped", log)
    assert log.rstrip().endswith("INFO main fastmesh.supervisor: stopped")


def test_sigterm_closes_idle_client_after_drain_timeout(start: Start) -> None:
    fm = start(workers=1, drain_timeout="1s")
    client = open_echo(fm.port)
    began = time.monotonic()
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0
    elapsed = time.monotonic() - began
    assert 0.9 <= elapsed < 6, elapsed
    client.settimeout(5)
    try:
        assert client.recv(100) == b""          # the proxy closed it at the drain timeout
    except ConnectionResetError:
        pass
    client.close()
    assert "drain timeout: closing 1 connection(s)" in fm.log()


def test_second_sigterm_stops_without_waiting_for_the_drain(start: Start) -> None:
    fm = start(workers=1, drain_timeout="60s")
    client = open_echo(fm.port)
    fm.proc.send_signal(signal.SIGTERM)
    fm.wait_log(r"w0 fastmesh\.worker: received SIGTERM")
    time.sleep(0.6)                             # past the window in which a repeat is the same stop
    began = time.monotonic()
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0
    assert time.monotonic() - began < 5
    assert "received SIGTERM again: killing workers now" in fm.log()
    assert re.search(r"w0 \(pid \d+\) stopped: killed by signal SIGKILL", fm.log())
    client.close()


def test_a_stop_signal_delivered_twice_at_once_still_drains(start: Start) -> None:
    # timeout(1) signals the process and its group; Ctrl-C reaches every process: one stop, not two.
    fm = start(workers=1, drain_timeout="1s")
    client = open_echo(fm.port)
    fm.proc.send_signal(signal.SIGTERM)
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0
    assert "killing workers now" not in fm.log()
    assert "drain timeout: closing 1 connection(s)" in fm.log()
    client.close()


def test_workers_exit_when_supervisor_is_killed(start: Start) -> None:
    fm = start(workers=2, drain_timeout="1s")
    pids = list(fm.worker_pids().values())
    fm.proc.kill()
    fm.proc.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "workers outlived their supervisor"


def test_sighup_reloads_in_place_and_changes_nothing_else(start: Start) -> None:
    fm = start(workers=1)
    pids = fm.worker_pids()
    fm.proc.send_signal(signal.SIGHUP)
    fm.wait_log(r"INFO main fastmesh\.reload: config reloaded \(SIGHUP\) in [\d.]+ ms: "
                r"applied by 1 worker\(s\): no changes")
    assert http_get(fm.port) in (1, 2, 3)
    assert fm.proc.poll() is None and fm.worker_pids() == pids
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0


def proc_field(pid: int, name: str, path: str = "status") -> str:
    """One `Name: value` line's value from /proc/PID/status (or smaps_rollup)."""
    with open(f"/proc/{pid}/{path}") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == name:
                return value.split()[0]
    raise KeyError(name)


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def test_workers_are_forked_from_the_supervisor_and_share_its_pages(start: Start) -> None:
    fm = start(workers=2)
    pids = list(fm.worker_pids().values())
    assert {int(proc_field(pid, "PPid")) for pid in pids} == {fm.proc.pid}, "no process between them"
    assert children(fm.proc.pid) == set(pids), "no fork server or other helper process"
    for pid in pids:
        assert comm(pid) == "fastmesh-worker"
        # Pages written before the fork (the interpreter, the data path's modules) stay shared with the supervisor
        # and the other worker; a fresh interpreter shares none of its heap (a few KiB of Shared_Dirty).
        assert int(proc_field(pid, "Shared_Dirty", "smaps_rollup")) > 4096, pid
        # The supervisor's fds (its loop's epoll, the admin and demo listeners, the other worker's pipe and
        # control link) stay the supervisor's: a worker holds stdin/out/err, its own fds and what it opened.
        targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert not any(t.startswith("anon_inode:[pidfd") for t in targets), targets
        assert admin_listener_inode(fm) not in targets, targets
    assert {http_get(fm.port) for _ in range(6)} == {1, 2, 3}
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0
    assert not any(alive(pid) for pid in pids)


def private_clean_kib(pid: int, under: str = "/") -> dict[str, int]:
    """KiB of file pages that only pid maps, by file, for the files under `under`."""
    found: dict[str, int] = {}
    path = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if "-" in parts[0] and not parts[0].endswith(":"):
                path = parts[5].strip() if len(parts) > 5 else ""
            elif path.startswith(under) and parts[0] == "Private_Clean:" and int(parts[1]):
                found[path] = found.get(path, 0) + int(parts[1])
    return found


def pageout_supported() -> bool:
    """Whether this kernel takes MADV_PAGEOUT (Linux 5.4), asked of one anonymous page of our own."""
    import ctypes
    import mmap
    page = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        page[0] = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        return bool(libc.madvise(address, mmap.PAGESIZE, pageout.MADV_PAGEOUT) == 0)
    finally:
        page.close()


def test_supervisor_gives_back_the_file_pages_only_it_touched(start: Start) -> None:
    # The supervisor imported the data path for its workers, and ran OpenSSL's and the extensions' init code: the
    # pages only it touched are reclaimed once the workers serve (about 6 MiB of them), while each worker keeps (and
    # shares) the code it runs, and the supervisor reads back what it needs.
    if not pageout_supported():
        pytest.skip("this kernel has no MADV_PAGEOUT")
    core = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(pageout.__file__)), "..", "_core")) + os.sep
    fm = start(workers=1)
    worker = fm.worker_pids()["w0"]
    assert http_get(fm.port) in (1, 2, 3)
    deadline = time.monotonic() + WAIT
    while sum((held := private_clean_kib(fm.proc.pid)).values()) > 1024 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(held.values()) <= 1024, f"the supervisor still holds file pages alone (KiB): {held}"
    assert sum(private_clean_kib(fm.proc.pid, core).values()) <= 512
    assert int(proc_field(worker, "Rss", "smaps_rollup")) > 0 and http_get(fm.port) in (1, 2, 3)
    with urllib.request.urlopen(f"http://127.0.0.1:{fm.admin_port}/ready", timeout=WAIT) as ready:
        assert ready.status == 200, "the supervisor still answers"
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0


def merge_supported() -> bool:
    """Whether this kernel reports per-process same-page merging (Linux 6.4 and later)."""
    try:
        with open("/proc/self/ksm_stat") as f:
            return "ksm_merge_any" in f.read()
    except OSError:
        return False


def merge_any(pid: int) -> bool:
    """Whether pid is opted into same-page merging (PR_SET_MEMORY_MERGE), as /proc/PID/ksm_stat says."""
    with open(f"/proc/{pid}/ksm_stat") as f:
        return "ksm_merge_any: yes" in f.read()


@pytest.mark.parametrize("zygote", ["1", "0"])
def test_merge_pages_opts_the_instance_in(start: Start, monkeypatch: pytest.MonkeyPatch, zygote: str) -> None:
    # FASTMESH_MERGE_PAGES=1: the supervisor opts in before it forks (a forked worker inherits it, a fresh
    # interpreter asks for itself). Whether anything is merged is the host's choice (the kernel's scanner), which
    # the test leaves as it is: the log says so when it is off.
    if not merge_supported():
        pytest.skip("this kernel has no PR_SET_MEMORY_MERGE")
    monkeypatch.setenv("FASTMESH_ZYGOTE", zygote)
    monkeypatch.setenv("FASTMESH_MERGE_PAGES", "1")
    fm = start(workers=2)
    workers = list(fm.worker_pids().values())
    assert len(workers) == 2 and all(merge_any(pid) for pid in [fm.proc.pid, *workers])
    with open("/sys/kernel/mm/ksm/run") as f:
        scanning = f.read().strip() == "1"
    warned = "FASTMESH_MERGE_PAGES=1: asked for, but the kernel's same-page merging is not running" in fm.log()
    assert warned != scanning, fm.log()
    assert http_get(fm.port) in (1, 2, 3)
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0


def test_pages_are_not_merged_unless_asked(start: Start) -> None:
    if not merge_supported():
        pytest.skip("this kernel has no PR_SET_MEMORY_MERGE")
    fm = start(workers=1)
    assert not any(merge_any(pid) for pid in [fm.proc.pid, *fm.worker_pids().values()])
    assert "FASTMESH_MERGE_PAGES" not in fm.log()


def children(pid: int) -> set[int]:
    """The processes whose parent is pid."""
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(child) for child in f.read().split())
    return found


def admin_listener_inode(fm: Fastmesh) -> str:
    """`socket:[inode]` of the supervisor's admin listening socket, as /proc/PID/fd shows it."""
    port = f"{fm.admin_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port}") and fields[3] == "0A":       # LISTEN
                return f"socket:[{fields[9]}]"
    raise AssertionError(f"no listener on the admin port {port}")


MODULES_ON_SIGNAL = """import os, signal, sys
def _dump(*_):
    path = os.path.join(os.environ["FASTMESH_TEST_MODULES"], str(os.getpid()))
    with open(path + ".part", "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    os.rename(path + ".part", path)     # whole, or not there yet
signal.signal(signal.SIGUSR2, _dump)
"""


def test_nothing_of_ours_is_imported_after_the_first_fork(
        start: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A module imported after the fork, by the supervisor (admin, discovery, reloads) or by a worker, puts its objects
    # into the holes of memory pages they share, and each such page is then copied: keep PRELOAD whole. A worker
    # starts with the supervisor's modules, so what one has and the other lacks was imported after the fork.
    # A sitecustomize (inherited by the forked worker) writes each process's sys.modules when sent SIGUSR2.
    hook, dumps = tmp_path / "hook", tmp_path / "modules"
    hook.mkdir()
    dumps.mkdir()
    (hook / "sitecustomize.py").write_text(MODULES_ON_SIGNAL)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("FASTMESH_TEST_MODULES", str(dumps))
    fm = start(workers=1)
    worker = fm.worker_pids()["w0"]
    assert int(proc_field(worker, "PPid")) == fm.proc.pid
    assert http_get(fm.port) in (1, 2, 3)
    for pid in (fm.proc.pid, worker):
        os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + WAIT
    while len(list(dumps.glob("[0-9]*[0-9]"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    modules = {int(path.name): set(path.read_text().split()) for path in dumps.glob("[0-9]*[0-9]")}
    bare = set(subprocess.run([sys.executable, "-c", "import sys; print(*sys.modules)"], capture_output=True,
                              text=True, check=True).stdout.split())
    bare_openssl = openssl_at_start()
    assert "fastmesh.admin.server" in modules[fm.proc.pid] and "fastmesh.proxy" in modules[worker]
    for pid, other in ((fm.proc.pid, worker), (worker, fm.proc.pid)):
        late = {name for name in modules[pid] - modules[other] if name.startswith("fastmesh")}
        assert not late, f"imported after the fork by {comm(pid)}: {sorted(late)}"
        # No plugin is named by entry point: importlib.metadata (and email, csv, zipfile with it) stays unloaded;
        # so does difflib, which only a config with an unknown key needs.
        for name in ("importlib.metadata", "email", "difflib"):
            assert name not in modules[pid], f"{comm(pid)} loaded {name}"
        # uvloop only where FASTMESH_LOOP asks for it; argparse (and shutil, bz2, lzma with it) is dropped once the
        # command line is parsed, and the TOML reader (tomllib, datetime) once the config file is read (a worker
        # never reads it); pathlib, tempfile, ctypes, decimal and ipaddress are not needed, nor random (health checks
        # load it), http (a plugin's answer), base64 or the thread pool (a thread filter, span export), nor the idna
        # codec (and stringprep, unicodedata: addresses go to getaddrinfo as bytes); nor OpenSSL
        # without a tls table (ssl, _ssl, _hashlib and what imports it) (unless the interpreter's own start-up, its
        # site hooks, loads them).
        unneeded = {"uvloop", "argparse", "shutil", "lzma", "pathlib", "tempfile", "ctypes", "decimal", "ipaddress",
                    "ssl", "_ssl", "_hashlib", "hashlib", "hmac", "secrets", "importlib.resources", "tomllib",
                    "datetime", "random", "http", "base64", "queue", "concurrent.futures.thread", "encodings.idna",
                    "stringprep", "unicodedata"}
        for name in unneeded - bare:
            assert name not in modules[pid], f"{comm(pid)} holds {name}"
        assert not openssl_mapped(pid) - bare_openssl, f"{comm(pid)} maps {sorted(openssl_mapped(pid))}"
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0


def wakeups(pid: int, seconds: float) -> int:
    """How often pid went to sleep and woke (voluntary context switches) over the next `seconds`."""
    before = int(proc_field(pid, "voluntary_ctxt_switches"))
    time.sleep(seconds)
    return int(proc_field(pid, "voluntary_ctxt_switches")) - before


def test_an_idle_worker_sleeps_and_a_connection_brings_its_tick_back(start: Start) -> None:
    # With nothing open, no deadline can pass: the reactor's tick slows from every 25 ms to every second (an idle
    # worker woke 40 times a second before). A connection makes it tick fast again at once, for its deadlines.
    fm = start(workers=1)
    worker = fm.worker_pids()["w0"]
    time.sleep(0.5)                     # the first tick has found nothing to hold
    idle = wakeups(worker, 2.0)         # the tick's 2, asyncio's own timers (the parent watch) a few a second
    with open_echo(fm.port):            # a relayed connection holds an idle timeout
        held = wakeups(worker, 1.0)     # about 40
    assert idle < 20 and held > idle, (idle, held)
    assert http_get(fm.port) in (1, 2, 3)
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0


def test_without_forking_workers_are_fresh_interpreters(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTMESH_ZYGOTE", "0")
    fm = start(workers=1)
    pid = fm.worker_pids()["w0"]
    assert int(proc_field(pid, "PPid")) == fm.proc.pid
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"\0_worker\0" in f.read()
    assert http_get(fm.port) in (1, 2, 3)
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0


@pytest.mark.parametrize("zygote", ["1", "0"], ids=["forked", "fresh-interpreter"])
def test_restarted_worker_runs_the_running_config_not_the_file_as_edited_since(
        start: Start, monkeypatch: pytest.MonkeyPatch, zygote: str) -> None:
    # The file is edited (here: broken) but not reloaded; a worker that dies meanwhile comes back with what the
    # instance runs, from the supervisor (the object when forked, its JSON for a fresh interpreter), never with the
    # file as it is now: one that read it would refuse to start here, or run other settings than its siblings.
    monkeypatch.setenv("FASTMESH_ZYGOTE", zygote)
    fm = start(workers=1, drain_timeout="1s")
    fm.config.write_text("workers = \"not a number\"\n[[listeners]\n")
    old = fm.worker_pids()["w0"]
    os.kill(old, signal.SIGKILL)
    fm.wait_log(r"w0 \(pid \d+\) ready", count=2)
    assert fm.worker_pids()["w0"] != old
    assert {http_get(fm.port) for _ in range(6)} == {1, 2, 3}
    assert "config no longer loads" not in fm.log()
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0


def test_killed_forked_worker_is_forked_again(start: Start) -> None:
    # The supervisor hears of the death through the worker's pidfd (its exit status included) and forks the next
    # one from its running loop; the new worker serves, and the other one never noticed.
    fm = start(workers=2, drain_timeout="1s")
    first = fm.worker_pids()
    os.kill(first["w0"], signal.SIGKILL)
    fm.wait_log(r"w0 \(pid \d+\) exited unexpectedly: killed by signal SIGKILL")
    fm.wait_log(r"w\d \(pid \d+\) ready", count=3)
    now = fm.worker_pids()
    assert now["w1"] == first["w1"] and now["w0"] != first["w0"]
    assert int(proc_field(now["w0"], "PPid")) == fm.proc.pid and comm(now["w0"]) == "fastmesh-worker"
    assert {http_get(fm.port) for _ in range(6)} == {1, 2, 3}
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0
    assert "killed by signal" not in fm.log().split("received SIGTERM")[-1]


def test_forked_worker_on_uvloop_serves_and_drains(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    # A uvloop worker forked from the supervisor's running uvloop: its own loop, its own signal handling (the stop
    # is a drain, not the default action, and does not reach the supervisor's loop).
    monkeypatch.setenv("FASTMESH_LOOP", "uvloop")
    fm = start(workers=1, drain_timeout="1s")
    worker = fm.worker_pids()["w0"]
    assert int(proc_field(worker, "PPid")) == fm.proc.pid
    assert {http_get(fm.port) for _ in range(6)} == {1, 2, 3}
    os.kill(worker, signal.SIGHUP)          # a worker ignores it (reloads come from the supervisor)
    assert http_get(fm.port) in (1, 2, 3) and fm.worker_pids()["w0"] == worker
    assert "reloading" not in fm.log()
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0
    log = fm.log()
    assert "w0 (pid %d) stopped: exit code 0" % worker in log, log[-2000:]


def test_stop_sent_to_every_process_still_drains_cleanly(start: Start) -> None:
    # systemd's control-group kill (and timeout(1), a group kill) sends SIGTERM to the workers as well as the
    # supervisor: the stop is the supervisor's, so it is still one clean drain.
    fm = start(workers=1, drain_timeout="1s")
    worker = fm.worker_pids()["w0"]
    for pid in (fm.proc.pid, worker):
        os.kill(pid, signal.SIGTERM)
    assert fm.wait_exit() == 0
    log = fm.log()
    assert "killed by signal" not in log and "exited unexpectedly" not in log, log[-2000:]
    assert not alive(worker)


def test_stop_reaching_the_worker_a_moment_first_is_still_the_instances_stop(start: Start) -> None:
    # The same group kill with the worker's signal handled first: its clean exit must not be taken for a crash
    # (no restart of a worker that the supervisor's own stop would then kill mid-start).
    fm = start(workers=1, drain_timeout="1s")
    worker = fm.worker_pids()["w0"]
    os.kill(worker, signal.SIGTERM)
    time.sleep(0.05)
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0
    log = fm.log()
    assert "killed by signal" not in log and "exited unexpectedly" not in log, log[-2000:]
    assert "w0 (pid %d) stopped: exit code 0" % worker in log, log[-2000:]


def test_forked_worker_exits_when_supervisor_is_killed(start: Start) -> None:
    fm = start(workers=1, drain_timeout="1s")
    worker = fm.worker_pids()["w0"]
    fm.proc.kill()
    fm.proc.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker), "the worker outlived its supervisor"


def test_memtrace_switch_writes_snapshots_that_compare(start: Start, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    from fastmesh.process import memtrace
    where = tmp_path / "memtrace"
    monkeypatch.setenv("FASTMESH_MEMTRACE", str(where))
    monkeypatch.setenv("FASTMESH_MEMTRACE_EVERY", "0.5")
    fm = start(workers=1)
    pid = fm.worker_pids()["w0"]
    deadline = time.monotonic() + WAIT
    while len(list(where.glob(f"w0-{pid}-*.types"))) < 2 and time.monotonic() < deadline:
        http_get(fm.port)
        time.sleep(0.1)
    snaps = sorted(where.glob(f"w0-{pid}-*.tracemalloc"))
    types = sorted(where.glob(f"w0-{pid}-*.types"))
    assert len(snaps) >= 2 and len(types) >= 2, list(where.iterdir())
    # Read only files whose successor exists (k = 0 and 1): the worker may be writing the next one right now.
    counts = {name: int(n) for n, name in (line.split(" ", 1) for line in types[0].read_text().splitlines())}
    assert counts["function"] > 0 and sum(counts.values()) > 100     # the worker's live objects, by type
    lines = memtrace.compare(str(snaps[0]), str(snaps[1]))
    assert lines[0].startswith("traced total: ") and len(lines) > 1
    old, new = tmp_path / "old.types", tmp_path / "new.types"
    old.write_text("10 dict\n5 Downstream\n")
    new.write_text("12 dict\n5 Downstream\n1 Timer\n")
    assert memtrace.compare(str(old), str(new)) == ["      +2 dict", "      +1 Timer"]
    fm.proc.send_signal(signal.SIGTERM)
    assert fm.wait_exit() == 0


def test_supervisor_preloads_modules_that_exist() -> None:
    import importlib

    from fastmesh.process.zygote import PRELOAD
    for name in PRELOAD:            # a renamed module would quietly stop being shared
        importlib.import_module(name)
