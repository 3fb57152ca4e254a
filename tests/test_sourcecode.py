"""Lint and type checks run as tests: flake8, cython-lint, mypy on the package, stubtest on the core's stubs."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return out.stdout.split()


def _run(*args: str) -> None:
    proc = subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _tool(name: str) -> str:
    """The console script installed beside this interpreter (the test extras), else the one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e .[test]")
    return found


def test_flake8() -> None:
    _run(_tool("flake8"), "--max-line-length", "120", *_tracked("*.py"))


def test_cython_lint() -> None:
    _run(_tool("cython-lint"), "--max-line-length", "120", *_tracked("*.pyx", "*.pxd"))


def test_mypy() -> None:
    _run(_tool("mypy"), "fastmesh")


# What stubtest reports about a Cython module that says nothing about the stubs: pickling helpers, the C API table,
# cdef classes being final bases, and __init__, whose parameters live in __cinit__ where introspection cannot see them.
_CYTHON_NOISE = re.compile(r"__reduce_cython__|__setstate_cython__|__pyx_|\.__test__ |disjoint base|"
                           r"\.__init__ is inconsistent|is not present in stub")
_TYPING_ONLY = {"fastmesh._core.router.Explained", "fastmesh._core.cluster.EndpointState",
                "fastmesh._core.http1.conn.AccessLog", "fastmesh._core.errors.ErrorEntry"}   # for mypy only


def test_core_stubs_match_the_compiled_modules() -> None:
    """Every name, method and signature a _core .pyi declares exists at runtime as declared (stubtest)."""
    core = REPO / "fastmesh" / "_core"
    modules = sorted(".".join(("fastmesh", "_core", *p.relative_to(core).with_suffix("").parts))
                     for p in core.rglob("*.pyi"))
    assert "fastmesh._core.http1.conn" in modules and "fastmesh._core.reactor" in modules
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", *modules], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")
              and not _CYTHON_NOISE.search(line)
              and not any(line.startswith(f"error: {name} is not present at runtime") for name in _TYPING_ONLY)]
    assert not errors, "\n".join(errors) + "\n" + proc.stderr[-2000:]
