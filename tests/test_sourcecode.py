"""Lint and type checks run as tests: flake8 on the Python, cython-lint on the Cython, mypy on the package."""
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
