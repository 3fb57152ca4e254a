"""Same-page merging of the instance's memory, when FASTMESH_MERGE_PAGES=1 asks for it (Linux 6.4, kernel KSM).

A worker forked from the supervisor shares its pages copy-on-write, but Python writes an object's reference count
whenever it uses it: by idle time a worker has copied about 1,100 inherited pages, and some 400 of them hold again
exactly what the supervisor's copy holds (counts raised, then lowered). The kernel's same-page merging (KSM) finds
identical pages and maps them once more. PR_SET_MEMORY_MERGE opts every anonymous mapping of the process in, now
and later, and a forked worker inherits it (a fresh interpreter asks for itself); Python's arenas need no madvise.

Off by default, as it is the host's choice too: merging happens only while the kernel's scanner runs
(/sys/kernel/mm/ksm/run = 1, set by root), it costs that scanner's CPU, and a merged page lets another process that
also opted in learn, by timing a write, that a page with the same content exists (a known side channel). Turn it on
where the processes that opt in on a host trust one another, such as one proxy's instances beside every service.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("fastmesh.supervisor")

ENV = "FASTMESH_MERGE_PAGES"        # "1": opt the instance's memory into same-page merging
PR_SET_MEMORY_MERGE = 67            # <linux/prctl.h>, Linux 6.4
PR_GET_MEMORY_MERGE = 68
KSM_RUN = "/sys/kernel/mm/ksm/run"


def requested() -> bool:
    return os.environ.get(ENV, "") == "1"


def enable() -> str | None:
    """Opt this process (and the children it forks) in; what stands in the way, in words, or None."""
    from fastmesh._core.syscalls import prctl
    try:
        prctl(PR_SET_MEMORY_MERGE, 1)
    except OSError as exc:
        return (f"{ENV}=1: the kernel refused same-page merging ({exc.strerror}; it needs Linux 6.4 or later, "
                "built with KSM)")
    try:
        with open(KSM_RUN) as f:
            running = f.read().strip() == "1"
    except OSError:
        running = False
    if not running:
        return (f"{ENV}=1: asked for, but the kernel's same-page merging is not running ({KSM_RUN} is not 1): "
                "nothing is merged until root starts it")
    return None


def enable_if_requested() -> None:
    """Opt in when FASTMESH_MERGE_PAGES=1 asks for it, and say why it cannot help when it cannot."""
    if requested():
        problem = enable()
        if problem is not None:
            log.warning("%s", problem)
        else:
            log.debug("same-page merging on")
