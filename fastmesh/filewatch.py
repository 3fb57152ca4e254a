"""Folder watches through inotify (fastmesh._core.syscalls) for what re-reads files when they change: discovery files,
naming tables, TLS certificates. A watch only wakes its reader early; readers still poll, for where inotify
cannot see (no inotify, NFS)."""
from __future__ import annotations

import asyncio
import os

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x2, 0x4, 0x8, 0x80, 0x100, 0x200


class DirWatch:
    """inotify on a file's folder (so a rename into place is seen): sets `changed` on any change in it; does
    nothing where inotify is missing."""

    def __init__(self, folder: str, changed: asyncio.Event) -> None:
        self.fd = -1
        self.changed = changed
        from fastmesh._core.syscalls import inotify_open, inotify_watch
        try:
            fd = inotify_open()
        except OSError:                 # no inotify here (or no fd left): the readers' polls remain
            return
        mask = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
        try:
            inotify_watch(fd, os.fsencode(folder), mask)
        except OSError:                 # a folder that is gone, or too many watches
            os.close(fd)
            return
        self.fd = fd
        asyncio.get_running_loop().add_reader(fd, self._drain)

    def _drain(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        self.changed.set()

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
