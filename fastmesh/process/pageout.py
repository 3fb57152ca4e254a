"""Give back the file pages that only the supervisor touched, once its workers are forked and serving.

The supervisor imports the data path (fastmesh/_core) only so that the workers it forks share it (zygote.py), and
importing ran every extension's init code (type objects, string tables, cached constants); OpenSSL's start-up (when
the config has a tls table), the interpreter's import machinery and the config parser ran there too. A worker,
forked after that, never runs that code again, and the supervisor does not move requests: those clean file pages
stayed mapped by the supervisor alone and counted in full in its PSS, about 6 MiB of the instance at idle
(`python -m bench.footprint --maps`: 2.5 MiB of fastmesh/_core, 3.2 of libcrypto, the rest stdlib extensions).
MADV_PAGEOUT (Linux 5.4) asks the kernel to reclaim them now. It leaves alone every page another process maps (the
code a worker runs, libc, the interpreter's loop), and a page the supervisor needs again is read back from the file.

Only private mappings of files holding no anonymous pages are advised: their pages are the file's, dropped without
swapping (relocated data, copied on write, would be pushed to swap; shared mappings such as the stats memory are
never touched).
"""
from __future__ import annotations

import logging

log = logging.getLogger("fastmesh.supervisor")

MADV_PAGEOUT = 21           # <asm-generic/mman-common.h>


def _file_backed(path: str, perms: str, prefix: str) -> bool:
    """A private mapping of a regular file under prefix: not [heap] or [stack], not /dev, not a memfd or a deleted
    file (whose pages could only go to swap)."""
    return (path.startswith(prefix) and perms.endswith("p") and not path.startswith("/dev/")
            and not path.startswith("/memfd:") and not path.endswith("(deleted)"))


def file_mappings(prefix: str = "/", smaps: str = "/proc/self/smaps") -> list[tuple[int, int, int]]:
    """(start, end, resident KiB) of each private mapping of a file under `prefix` that holds no anonymous page."""
    found: list[tuple[int, int, int]] = []
    current: list[int] | None = None        # [start, end, rss, anonymous] of a mapping being read
    with open(smaps) as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):          # a mapping's first line: range, perms, ..., path
                if current is not None and current[3] == 0:
                    found.append((current[0], current[1], current[2]))
                parts = line.split(maxsplit=5)
                path = parts[5].strip() if len(parts) > 5 else ""
                start, end = (int(x, 16) for x in head.split("-"))
                current = [start, end, 0, 0] if _file_backed(path, parts[1], prefix) else None
            elif current is not None and head == "Rss:":
                current[2] = int(rest.split()[0])
            elif current is not None and head == "Anonymous:":
                current[3] = int(rest.split()[0])
    if current is not None and current[3] == 0:
        found.append((current[0], current[1], current[2]))
    return found


def release_file_pages(prefix: str = "/") -> int:
    """Advise MADV_PAGEOUT over the file-only mappings under prefix; the KiB they had resident (0 where unsupported).
    The kernel reclaims only the pages this process alone maps, so the figure is an upper bound."""
    from fastmesh._core.syscalls import madvise
    try:
        ranges = file_mappings(prefix)
    except OSError:                     # no /proc: nothing to give back
        return 0
    advised = 0
    for start, end, rss in ranges:
        if not rss:
            continue
        try:
            madvise(start, end - start, MADV_PAGEOUT)
        except OSError as exc:          # EINVAL before Linux 5.4: the pages stay, as they always did
            log.debug("MADV_PAGEOUT refused: %s", exc.strerror)
            return advised
        advised += rss
    return advised
