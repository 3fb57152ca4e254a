"""Package marker for fastmesh._core.balance."""
