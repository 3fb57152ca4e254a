"""`python -m fastmesh`: the same command as the installed `fastmesh` script."""
import sys

from fastmesh.cli.main import main

sys.exit(main())
