"""Config text many tests start from: the process keys with an admin server, and an http listener on 127.0.0.1.

Each returns whole TOML lines, so a test adds its own keys after them: keys written right after http_listener()
belong to that listener, until a [[listeners.routes]] or another table begins.
"""
from __future__ import annotations

# The one route of a listener that sends every request to the logical name "users" (the naming tests).
USERS_ROUTE = '[[listeners.routes]]\nservice = "users"\n'


def process_keys(admin: int, workers: int = 2) -> str:
    """`workers` workers, a short drain (tests stop quickly) and the admin server on 127.0.0.1:admin."""
    return f'workers = {workers}\ndrain_timeout = "2s"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'


def http_listener(port: int, name: str = "web") -> str:
    """A [[listeners]] table with protocol = "http" on 127.0.0.1:port; the caller adds where requests go."""
    return f'[[listeners]]\nname = "{name}"\nlisten = "127.0.0.1:{port}"\nprotocol = "http"\n'
