"""Package marker for fastmesh._core.http1."""
