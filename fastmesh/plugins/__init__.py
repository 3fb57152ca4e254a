"""Plugins: filters, discovery sources and sinks written in Python (api.py says what each kind implements)."""
from fastmesh.plugins.api import (
    Answer, DiscoverySource, Filter, PluginConfigError, Request, Response, ResponseFilter, Sink,
)

__all__ = ["Answer", "DiscoverySource", "Filter", "PluginConfigError", "Request", "Response", "ResponseFilter", "Sink"]
