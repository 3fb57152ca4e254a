"""The request view of an HTTP/2 head (http2/view.pyx): pseudo-header fields become method, authority and path;
what a stream's upstream leg renders (authority as sent, scheme, body, gRPC) comes from the same block."""
from __future__ import annotations

from fastmesh._core.http2.view import request_parts
from fastmesh._core.router import METHOD_IDS


def block(*fields: tuple[bytes, bytes], method: bytes = b"GET", authority: bytes | None = b"api.example.com:8443",
          path: bytes | None = b"/v1/items?id=7") -> list[tuple[bytes, bytes]]:
    head = [(b":method", method), (b":scheme", b"https")]
    if authority is not None:
        head.append((b":authority", authority))
    if path is not None:
        head.append((b":path", path))
    return head + list(fields)


def test_pseudo_header_fields_become_method_authority_path_and_query() -> None:
    v = request_parts(block((b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2")))
    assert v["method"] == METHOD_IDS["GET"] and v["method_token"] == b"GET"
    assert v["authority"] == b"api.example.com"            # routing's host: no port
    assert v["host_upstream"] == b"api.example.com:8443"   # Host upstream: as the client sent it
    assert (v["path"], v["query"], v["has_path"]) == (b"/v1/items", b"?id=7", True)
    assert v["scheme"] == b"https"
    assert v["fields"] == [(b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2")]   # no pseudo-headers


def test_without_authority_the_host_field_names_the_host() -> None:
    v = request_parts(block((b"host", b"Other.Example.:80"), authority=None))
    assert v["authority"] == b"Other.Example" and v["host_upstream"] == b"Other.Example.:80"


def test_connect_has_no_path_and_other_methods_keep_their_token() -> None:
    v = request_parts(block(method=b"CONNECT", path=None, authority=b"db.internal:5432"))
    assert v["method"] == METHOD_IDS["CONNECT"] and not v["has_path"] and v["authority"] == b"db.internal"
    v = request_parts(block(method=b"PURGE"))
    assert v["method"] == 0 and v["method_token"] == b"PURGE"


def test_body_grpc_and_te_trailers_are_read_from_the_block() -> None:
    v = request_parts(block((b"content-type", b"application/grpc+proto"), (b"te", b"trailers"), method=b"POST"),
                      content_length=12, end_stream=False)
    assert v["grpc"] and v["te_trailers"] and v["has_body"] and v["content_length"] == 12
    assert request_parts(block((b"content-type", b"application/grpc")))["grpc"]
    assert not request_parts(block((b"content-type", b"application/grpcx")))["grpc"]
    assert not request_parts(block((b"content-type", b"application/json")))["grpc"]
    assert not request_parts(block())["has_body"]
