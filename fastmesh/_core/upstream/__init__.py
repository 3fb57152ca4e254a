"""Package marker for fastmesh._core.upstream."""
