"""The admin side, run by the supervisor: the admin HTTP server (server.py) and its metrics rendering (metrics.py)."""
