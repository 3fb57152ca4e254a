"""What this build of the compiled core is: its debug and stats switches, read by tests and `fastmesh --version`."""

DEBUG = bool(FASTMESH_DEBUG)
STATS = bool(FASTMESH_STATS)   # False in a FASTMESH_STATS=0 build: data-path counters compiled out
