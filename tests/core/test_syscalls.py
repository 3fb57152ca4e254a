"""fastmesh._core.syscalls: the Linux calls the control plane makes, each raising OSError with the call's errno."""
from __future__ import annotations

import errno
import mmap
import os
import signal
from pathlib import Path

import pytest

from fastmesh._core import syscalls

MADV_NORMAL = 0
PR_GET_PDEATHSIG = 2
IN_CREATE = 0x100


def in_child(body: object) -> int:
    """Run body() in a forked child (it changes the process it runs in); the child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()  # type: ignore[operator]
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_process_name_is_what_proc_shows() -> None:
    def body() -> int:
        syscalls.set_process_name(b"fastmesh-test-name-too-long")
        with open("/proc/self/comm") as f:
            return 0 if f.read().strip() == "fastmesh-test-n" else 1     # the kernel keeps 15 bytes
    assert in_child(body) == 0


def test_parent_death_signal_is_set() -> None:
    def body() -> int:
        syscalls.set_parent_death_signal(signal.SIGTERM)
        import ctypes
        got = ctypes.c_int()
        ctypes.CDLL(None).prctl(PR_GET_PDEATHSIG, ctypes.byref(got), 0, 0, 0)
        return 0 if got.value == signal.SIGTERM else 1
    assert in_child(body) == 0


def test_prctl_refusal_is_an_oserror() -> None:
    with pytest.raises(OSError) as caught:
        syscalls.prctl(-1)
    assert caught.value.errno == errno.EINVAL


def test_madvise_on_our_own_page_and_on_nothing() -> None:
    page = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        import ctypes
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        syscalls.madvise(address, mmap.PAGESIZE, MADV_NORMAL)
        with pytest.raises(OSError) as caught:
            syscalls.madvise(address + 1, mmap.PAGESIZE, MADV_NORMAL)      # not page-aligned
        assert caught.value.errno == errno.EINVAL
    finally:
        page.close()


def test_inotify_sees_a_file_created_in_the_folder(tmp_path: Path) -> None:
    fd = syscalls.inotify_open()
    try:
        assert os.get_blocking(fd) is False and os.get_inheritable(fd) is False
        assert syscalls.inotify_watch(fd, os.fsencode(tmp_path), IN_CREATE) >= 1
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
        (tmp_path / "new").write_text("x")
        assert os.read(fd, 4096)
        with pytest.raises(FileNotFoundError):
            syscalls.inotify_watch(fd, os.fsencode(tmp_path / "absent"), IN_CREATE)
    finally:
        os.close(fd)
