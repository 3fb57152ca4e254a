"""Give back the compiled data path's file pages that only the supervisor touched, once its workers are forked.

The supervisor imports the data path (fastmesh/_core) only so that the workers it forks share it (zygote.py).
Importing ran every extension's init code (type objects, string tables, cached constants) in the supervisor; a
worker, forked after that, never runs it, and the supervisor does not move requests. Those clean file pages stayed
mapped by the supervisor alone and counted in full in its PSS: about 2.5 MiB of the instance at idle
(`python -m bench.footprint`). MADV_PAGEOUT (Linux 5.4) asks the kernel to reclaim them now. It leaves alone every
page another process maps (the code a worker runs stays where it is), and a page the supervisor needs again is read
back from the file. Only mappings holding no anonymous pages are advised: their pages are the file's, dropped
without swapping (relocated data, copied on write, is never pushed to swap by this).
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("fastmesh.supervisor")

MADV_PAGEOUT = 21           # <asm-generic/mman-common.h>
_CORE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_core") + os.sep


def file_mappings(prefix: str = _CORE, smaps: str = "/proc/self/smaps") -> list[tuple[int, int, int]]:
    """(start, end, resident KiB) of each mapping of a file under `prefix` that holds no anonymous page."""
    found: list[tuple[int, int, int]] = []
    current: list[int] | None = None        # [start, end, rss, anonymous] of a mapping of ours being read
    with open(smaps) as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):          # a mapping's first line: range, perms, ..., path
                if current is not None and current[3] == 0:
                    found.append((current[0], current[1], current[2]))
                parts = line.split(maxsplit=5)
                path = parts[5].strip() if len(parts) > 5 else ""
                start, end = (int(x, 16) for x in head.split("-"))
                current = [start, end, 0, 0] if path.startswith(prefix) else None
            elif current is not None and head == "Rss:":
                current[2] = int(rest.split()[0])
            elif current is not None and head == "Anonymous:":
                current[3] = int(rest.split()[0])
    if current is not None and current[3] == 0:
        found.append((current[0], current[1], current[2]))
    return found


def release_data_path_pages() -> int:
    """Advise MADV_PAGEOUT over our extensions' file-only mappings; the KiB they had resident (0 where unsupported)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        ranges = file_mappings()
    except (OSError, AttributeError):   # not Linux, or no /proc: nothing to give back
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for start, end, rss in ranges:
        if rss and madvise(start, end - start, MADV_PAGEOUT) == 0:
            released += rss
        elif rss:                       # EINVAL before Linux 5.4: the pages stay, as they always did
            log.debug("MADV_PAGEOUT refused: %s", os.strerror(ctypes.get_errno()))
            return released
    return released
