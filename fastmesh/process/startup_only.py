"""Modules a long-running process needed only to start (parsing its command line, reading its config file).

Dropped from sys.modules and collected, their memory goes back to the allocator, and what the process imports next
(the data path, before the first worker is forked) fills it: the pages the instance holds are fewer, and a worker
shares them all. A module that was loaded before the step that needed it, or that something still refers to,
stays; one needed again later is imported again then.
"""
from __future__ import annotations

import gc
import sys
from collections.abc import Iterable


def forget(names: Iterable[str], imported: set[str]) -> None:
    """Drop each of `names` that `imported` (the modules the step loaded) holds, then collect."""
    for name in names:
        if name in imported:
            sys.modules.pop(name, None)
    gc.collect()
