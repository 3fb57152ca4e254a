"""The ClientHello reader (passthrough's SNI) and the server-name table, driven with bytes: no sockets."""
from __future__ import annotations

import ssl

import pytest

from fastmesh._core.tls.clienthello import server_name
from fastmesh._core.tls.names import ServerNames


def hello(name: str | None) -> bytes:
    """A real first flight from Python's ssl (memory BIOs)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = name is not None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_found_in_a_whole_hello_and_more_for_every_prefix() -> None:
    data = hello("api.example.test")
    assert server_name(data) == ("found", "api.example.test")
    assert {server_name(data[:n])[0] for n in range(len(data))} == {"more"}


def test_no_name_and_not_tls() -> None:
    assert server_name(hello(None)) == ("none", None)
    assert server_name(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == ("bad", None)
    assert server_name(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == ("bad", None)     # a ServerHello type


def test_a_hello_split_over_records_is_gathered() -> None:
    data = hello("split.test")
    body = data[5:]
    records = b""
    for i in range(0, len(body), 100):       # the same handshake message in 100-byte records
        part = body[i:i + 100]
        records += data[:3] + len(part).to_bytes(2, "big") + part
    assert server_name(records) == ("found", "split.test")
    assert server_name(records[:-1])[0] == "more"


def test_lengths_that_lie_are_refused() -> None:
    data = bytearray(hello("liar.test"))
    data[6:9] = (1 << 20).to_bytes(3, "big")         # a ClientHello claiming a megabyte
    assert server_name(bytes(data)) == ("bad", None)
    assert server_name(b"\x16\x03\x01\xff\xff" + b"\x01" * 10)[0] == "bad"    # a record over the limit


def test_server_names_exact_before_wildcard_one_label_case_and_dot() -> None:
    names = ServerNames([("*.example.test", 1), ("api.example.test", 2), ("Other.Test", 3), ("api.example.test", 9)])
    assert names.lookup("api.example.test") == 2
    assert names.lookup("API.EXAMPLE.TEST.") == 2
    assert names.lookup("web.example.test") == 1
    assert names.lookup("a.b.example.test") == -1
    assert names.lookup("example.test") == -1
    assert names.lookup("other.test") == 3
    assert names.lookup("") == -1
