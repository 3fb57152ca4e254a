"""The few Linux calls the control plane makes that the standard library does not wrap: a worker's name and its
parent-death signal (prctl), giving file pages back (madvise), same-page merging (prctl), folder watches (inotify).

Compiled here rather than called through ctypes, which would load ctypes, _ctypes and libffi into the supervisor
and every worker (about 0.3 MiB of the instance's PSS) for a handful of calls made once. Each raises OSError with
the call's errno when it fails.
"""
from cpython.exc cimport PyErr_SetFromErrno


cdef extern from "<sys/prctl.h>" nogil:
    int c_prctl "prctl"(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)
    enum:
        PR_SET_NAME
        PR_SET_PDEATHSIG

cdef extern from "<sys/mman.h>" nogil:
    int c_madvise "madvise"(void *addr, size_t length, int advice)

cdef extern from "<sys/inotify.h>" nogil:
    int c_inotify_init1 "inotify_init1"(int flags)
    int c_inotify_add_watch "inotify_add_watch"(int fd, const char *pathname, unsigned int mask)
    enum:
        IN_NONBLOCK
        IN_CLOEXEC


def prctl(int option, unsigned long arg=0) -> int:
    """prctl(option, arg, 0, 0, 0); its result."""
    cdef int result = c_prctl(option, arg, 0, 0, 0)
    if result == -1:
        PyErr_SetFromErrno(OSError)
    return result


def set_process_name(bytes name) -> None:
    """PR_SET_NAME: what ps, top and /proc/PID/comm show (the kernel keeps the first 15 bytes)."""
    cdef const char *text = name
    if c_prctl(PR_SET_NAME, <unsigned long>text, 0, 0, 0) == -1:
        PyErr_SetFromErrno(OSError)


def set_parent_death_signal(int signum) -> None:
    """PR_SET_PDEATHSIG: the kernel sends signum to this process when the thread that forked it exits."""
    if c_prctl(PR_SET_PDEATHSIG, <unsigned long>signum, 0, 0, 0) == -1:
        PyErr_SetFromErrno(OSError)


def madvise(size_t start, size_t length, int advice) -> None:
    """madvise over [start, start + length) of this process's address space."""
    if c_madvise(<void *>start, length, advice) == -1:
        PyErr_SetFromErrno(OSError)


def inotify_open() -> int:
    """A new inotify fd, non-blocking and close-on-exec."""
    cdef int fd = c_inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd == -1:
        PyErr_SetFromErrno(OSError)
    return fd


def inotify_watch(int fd, bytes path, unsigned int mask) -> int:
    """Watch path for the events in mask; the watch descriptor."""
    cdef int wd = c_inotify_add_watch(fd, path, mask)
    if wd == -1:
        PyErr_SetFromErrno(OSError)
    return wd
