"""Package marker for fastmesh._core.tcp."""
