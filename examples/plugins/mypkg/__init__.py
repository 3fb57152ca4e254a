"""Worked examples of fastmesh plugins, one kind per module (see fastmesh/plugins/api.py for the interfaces)."""
