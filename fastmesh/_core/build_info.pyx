"""What this build of the compiled core is: its debug switch, read by tests and `fastmesh --version`."""

DEBUG = bool(FASTMESH_DEBUG)
