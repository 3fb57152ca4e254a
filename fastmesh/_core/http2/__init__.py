"""Package marker for fastmesh._core.http2 (the compiled HTTP/2 codec: frames, HPACK, streams, limits, session)."""
