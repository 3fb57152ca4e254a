"""One module per config section: TOML values -> schema dataclasses, problems reported through walk._Check."""
