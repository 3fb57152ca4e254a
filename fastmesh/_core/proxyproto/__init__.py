"""Package marker for fastmesh._core.proxyproto: the PROXY protocol (codec, and the gate listeners put first)."""
