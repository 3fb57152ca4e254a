"""Configuration: typed schema (schema.py) and the TOML loader that validates into it (load.py and its parts)."""
