"""The compile-time switches of the core: the normal build counts (FASTMESH_STATS=1) and setup.py offers --no-stats."""
from __future__ import annotations

import os
import subprocess
import sys

import fastmesh._core.build_info as build_info

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_normal_build_counts() -> None:
    # CI builds without FASTMESH_STATS=0: a build that compiled the counters out would make every stats test a lie.
    assert build_info.STATS is True
    assert isinstance(build_info.DEBUG, bool)


def test_setup_offers_no_stats() -> None:
    # The benchmark builds its second copy with this option's environment twin; both must stay known to setup.py.
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--no-stats" in out.stdout and "FASTMESH_STATS=0" in out.stdout
