"""Type stub for fastmesh._core.build_info."""
DEBUG: bool
STATS: bool
