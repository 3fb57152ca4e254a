# cython: language_level=3
"""Discovery's endpoint lists parsed in one compiled loop: the common spellings checked and made into Endpoints.

A file or plugin source hands the supervisor up to 10,000 endpoints an update; discovery/base.py's parse_endpoint
took about 7 µs each (a regex match, int(), dict checks, the frozen dataclass's __init__). Here an item that is
"a.b.c.d:port" or {"address": "a.b.c.d:port", "weight": N, "priority": N, "zone": ..., "metadata": ...} with a
canonical IPv4 literal (no leading zeros), a port from 1 to 65535 without leading zeros and whole numbers in range
is checked in C and its Endpoint made without __init__ (as slots.endpoints_of does). Every other item (IPv6,
another spelling, a wrong key or value) goes to `slow`, the Python parser, which accepts it canonicalized or raises
the error it names: the two agree on everything the fast path takes.
"""

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.long cimport PyLong_CheckExact
from cpython.dict cimport PyDict_CheckExact
from cpython.object cimport PyObject, PyObject_GenericSetAttr, PyTypeObject

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)
    PyTypeObject PyBaseObject_Type


cdef tuple _NO_ARGS = ()


cdef inline object _new(type cls):
    """object.__new__(cls) without the Python call (its argument parsing and checks took half of making an
    Endpoint). cls is a plain Python class (Endpoint): object's own tp_new is the one its instances need."""
    return PyBaseObject_Type.tp_new(cls, <PyObject *>_NO_ARGS, NULL)


cdef inline object _untracked(object e):
    """e, out of the cyclic collector's lists: an Endpoint holds a str and three ints and is frozen, so it can be
    in no cycle, and reference counting frees it alike. 10,000 of them an update, kept as long as their set: the
    collector no longer walks them in every young collection after an update nor in every full one after that."""
    PyObject_GC_UnTrack(<void *>e)
    return e
cdef object _ABSENT = object()         # a key the item does not have (None is a value a file can give)


cdef Py_ssize_t _host_end(const char *s, Py_ssize_t n) noexcept:
    """The length of a canonical dotted-quad IPv4 literal at the start of s (ends at ':'), or -1."""
    cdef Py_ssize_t i = 0
    cdef int octet, digits, value
    for octet in range(4):
        digits = 0
        value = 0
        while i < n and c'0' <= s[i] <= c'9' and digits < 4:
            value = value * 10 + (s[i] - c'0')
            digits += 1
            i += 1
        if digits == 0 or digits > 3 or value > 255 or (digits > 1 and s[i - digits] == c'0'):
            return -1
        if octet < 3:
            if i >= n or s[i] != c'.':
                return -1
            i += 1
    return i


cdef long _port(const char *s, Py_ssize_t n) noexcept:
    """A port of 1 to 5 digits without a leading zero, 1 to 65535, spanning all of s; -1 otherwise."""
    cdef Py_ssize_t i
    cdef long value = 0
    if n < 1 or n > 5 or s[0] == c'0':
        return -1
    for i in range(n):
        if not c'0' <= s[i] <= c'9':
            return -1
        value = value * 10 + (s[i] - c'0')
    return value if value <= 65535 else -1


cdef object _whole(value, long low, long high):
    """value when it is an int (not a bool) from low to high; None otherwise."""
    if not PyLong_CheckExact(value):
        return None
    if not low <= value <= high:
        return None
    return value


cdef str _key(e):
    """An endpoint's address as "ip:port" or "[ip]:port", the key of the duplicate check."""
    host = e.host
    return f"[{host}]:{e.port}" if ":" in host else f"{host}:{e.port}"


def parse_endpoints(list items, object slow, object endpoint, long max_weight, long max_priority):
    """(Endpoint objects (class `endpoint`) for `items` in order, the first address listed again or None); slow(item,
    i) parses an item the fast path does not take (or raises). Addresses are compared as canonically spelled."""
    cdef list out = []
    cdef set seen = set()
    cdef Py_ssize_t i, n, host_len, known, before
    cdef long port
    cdef const char *s
    cdef dict item_dict
    cdef str key
    repeated = None
    for i in range(len(items)):
        item = items[i]
        address = None
        weight = 1
        priority = 0
        if isinstance(item, str):
            address = item
        elif PyDict_CheckExact(item):
            item_dict = <dict>item
            address = item_dict.get("address")
            weight = item_dict.get("weight", _ABSENT)
            priority = item_dict.get("priority", _ABSENT)
            # Three lookups for the common item; the keys accepted but unused are looked for only when the item
            # has more keys than those found.
            known = (address is not None) + (weight is not _ABSENT) + (priority is not _ABSENT)
            if known != len(item_dict):
                known += ("zone" in item_dict) + ("metadata" in item_dict) + ("address" in item_dict
                                                                              and address is None)
            weight = 1 if weight is _ABSENT else _whole(weight, 1, max_weight)
            priority = 0 if priority is _ABSENT else _whole(priority, 0, max_priority)
            if known != len(item_dict) or not isinstance(address, str) or weight is None or priority is None:
                address = None
        port = -1
        if address is not None and (<str>address).isascii():     # (and no lone surrogate: it has no UTF-8 form)
            s = PyUnicode_AsUTF8AndSize(address, &n)
            host_len = _host_end(s, n)
            if 0 <= host_len < n and s[host_len] == c':':
                port = _port(s + host_len + 1, n - host_len - 1)
        if port < 0:                    # not a spelling taken here: the Python parser's (or its error)
            e = slow(item, i)
            key = _key(e)
        else:
            e = _new(<type>endpoint)
            PyObject_GenericSetAttr(e, "host", (<str>address)[:host_len])     # (as in make_endpoints)
            PyObject_GenericSetAttr(e, "port", port)
            PyObject_GenericSetAttr(e, "weight", weight)
            PyObject_GenericSetAttr(e, "priority", priority)
            _untracked(e)
            key = <str>address          # "a.b.c.d:port", canonical already
        before = len(seen)
        seen.add(key)                   # (one hash lookup: the set grows unless the address was listed before)
        if len(seen) == before and repeated is None:
            repeated = key
        out.append(e)
    return out, repeated


def make_endpoints(list hosts, list ports, list weights, list priorities, object endpoint):
    """Endpoint objects (class `endpoint`) for columns of equal length, made without __init__: a worker makes
    10,000 of them from each discovery update's payload (dataplane/slots.py endpoints_of)."""
    cdef Py_ssize_t i, n = len(hosts)
    if not len(ports) == len(weights) == len(priorities) == n:
        raise ValueError(f"columns of {n}, {len(ports)}, {len(weights)} and {len(priorities)} entries")
    cdef list out = [None] * n
    for i in range(n):
        e = _new(<type>endpoint)
        # The generic setattr (not the frozen dataclass's, which refuses): the values go into the instance's inline
        # slots, with no __dict__ object made for each endpoint.
        PyObject_GenericSetAttr(e, "host", hosts[i])
        PyObject_GenericSetAttr(e, "port", ports[i])
        PyObject_GenericSetAttr(e, "weight", weights[i])
        PyObject_GenericSetAttr(e, "priority", priorities[i])
        out[i] = _untracked(e)
    return out


def literal_rows(list slots, dict ranks, long v4, long v6):
    """Cluster.update's row per slot for IP literals in their canonical spelling (what discovery hands over):
    (v6 if the host has a ':' else v4, host, port, weight, ranks[priority], 0), None for a hole; a worker makes
    10,000 of them from each discovery update (dataplane/clusters.py endpoint_table)."""
    cdef Py_ssize_t i, n = len(slots)
    cdef list out = [None] * n
    for i in range(n):
        e = slots[i]
        if e is None:
            continue
        host = e.host
        out[i] = (v6 if ":" in host else v4, host, e.port, e.weight, ranks[e.priority], 0)
    return out
