"""Package marker for fastmesh._core.http2 (HTTP/2: HPACK, framing, streams, the session)."""
