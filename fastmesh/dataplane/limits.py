"""Instance-wide limits: the shared block of limit counters (fastmesh/_core/limits.pyx), made by the supervisor,
mapped by every worker, and the cell of each cluster.

The supervisor makes one memfd for the instance with a region per worker slot; a worker writes its region only,
and the supervisor zeroes a region when its worker exits, before the next one starts. A cluster's cell is found
by its name, so reloads need no new block: a cluster added by a reload claims a free cell, a rebuilt one finds
its old cell (what its requests under way hold stays counted). The block has room for CAPACITY_FACTOR x the
clusters of the starting config (at least MIN_CAPACITY); a cluster added past that counts in a private cell,
that is per worker, and says so in the log.
"""
from __future__ import annotations

import logging
import os

from fastmesh._core.limits import LimitBlock, LimitCell, private_cell
from fastmesh.config.schema import Config

log = logging.getLogger("fastmesh.limits")

MIN_CAPACITY = 64           # cells per region at least: the memfd's untouched pages cost nothing
CAPACITY_FACTOR = 4         # room for clusters added by reloads


def capacity_for(cfg: Config) -> int:
    return max(MIN_CAPACITY, CAPACITY_FACTOR * len(cfg.clusters))


class SharedLimits:
    """The supervisor's block: made once for `workers` worker slots, handed to each worker as an fd."""

    def __init__(self, cfg: Config, workers: int) -> None:
        self.fd = os.memfd_create("fastmesh-limits", os.MFD_CLOEXEC)
        try:
            self.block = LimitBlock.create(self.fd, capacity_for(cfg), workers)
        except BaseException:
            os.close(self.fd)
            raise

    def clear(self, worker: int) -> None:
        """Worker slot `worker`'s process has exited: the slots it held are free."""
        self.block.clear_worker(worker)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_limits(cfg: Config, fd: int | None, worker: int) -> LimitBlock:
    """The block this process counts limits in: the supervisor's (fd, region `worker`), or a private one for an
    embedded Proxy (its limits are its own). Closes fd."""
    if fd is None:
        return LimitBlock(capacity_for(cfg), 1, 0)
    try:
        return LimitBlock.attach(fd, worker)
    except (OSError, ValueError) as exc:
        log.warning("the supervisor's limits block cannot be used (%s): this worker's limits are its own", exc)
        return LimitBlock(capacity_for(cfg), 1, 0)
    finally:
        os.close(fd)


def cell_for(block: LimitBlock, name: str) -> LimitCell:
    """Cluster `name`'s cell in block, or a private one when the block is full."""
    cell = block.cell(name)
    if cell is None:
        log.warning("cluster %r: the limits block has no free cell (more clusters were added by reloads than it "
                    "has room for): its limits count per worker until fastmesh restarts", name)
        return private_cell(name)
    return cell
