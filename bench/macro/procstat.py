"""Read a process's CPU time, RSS and children from /proc (no psutil), for measuring a proxy under load."""
from __future__ import annotations

import os

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat from field 3 (state) on; the command name may hold spaces, so cut at the last ')'."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode("ascii", "replace")
    return data[data.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime (stat fields 14 and 15) of the whole thread group, in seconds.

    The process-level fields already include every thread, live or exited, so one read covers
    multi-threaded proxies such as Envoy.
    """
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0    # a zombie has no VmRSS line


def children(pid: int) -> list[int]:
    """Direct children of pid, found by scanning every /proc/N/stat for its parent id.

    /proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN, which not every kernel has, so scan instead.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if int(_stat_fields(int(name))[1]) == pid:
                found.append(int(name))
        except (OSError, ValueError, IndexError):
            continue    # the process ended while we looked
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Every process below pid (children, grandchildren, ...), parents before children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop(0))
        out.extend(kids)
        todo.extend(kids)
    return out


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def listening(port: int, host_hex: str = "0100007F") -> bool:
    """True when some socket is in LISTEN on 127.0.0.1:port (or on any address), read from /proc/net/tcp.

    Reading the table rather than connecting keeps the probe from opening an upstream connection
    through the proxy under test.
    """
    want = f"{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            addr, p = parts[1].split(":")
            if p == want and parts[3] == "0A" and addr in (host_hex, "00000000"):
                return True
    return False
