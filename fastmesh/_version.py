"""The single source of fastmesh's version."""
__version__ = "0.1.0"
