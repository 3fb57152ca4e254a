"""Side-by-side macro benchmark: fastmesh against HAProxy, nginx, Envoy and a direct run (entry point: run.py)."""
