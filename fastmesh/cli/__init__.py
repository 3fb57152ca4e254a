"""The `fastmesh` command: argument parsing (main.py) and one module per subcommand that renders its answer."""
