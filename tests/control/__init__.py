"""Control-plane tests: config loading, reload, discovery, health, admin."""
