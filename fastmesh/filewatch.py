"""Folder watches through inotify (libc, by ctypes) for what re-reads files when they change: discovery files,
naming tables, TLS certificates. A watch only wakes its reader early; readers still poll, for where inotify
cannot see (no inotify, NFS)."""
from __future__ import annotations

import asyncio
import ctypes
import os

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x2, 0x4, 0x8, 0x80, 0x100, 0x200
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class DirWatch:
    """inotify on a file's folder (so a rename into place is seen): sets `changed` on any change in it; does
    nothing where inotify is missing."""

    def __init__(self, folder: str, changed: asyncio.Event) -> None:
        self.fd = -1
        self.changed = changed
        try:
            libc = ctypes.CDLL(None, use_errno=True)     # the C library the interpreter links
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return
            mask = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
            if libc.inotify_add_watch(fd, os.fsencode(folder), mask) < 0:
                os.close(fd)
                return
        except (OSError, AttributeError):
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
