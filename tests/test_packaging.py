"""`pip wheel .` builds a wheel that carries every compiled module of the data path, its declarations and stubs."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_wheel_contains_the_compiled_core(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("fastmesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = [p.relative_to(REPO).as_posix() for p in (REPO / "fastmesh" / "_core").rglob("*.pyx")]
    assert sources, "no .pyx found"
    for pyx in sources:
        stem = pyx[:-len(".pyx")]
        assert any(n.startswith(stem + ".") and n.endswith(".so") for n in names), f"{stem} not compiled in wheel"
    assert "fastmesh/py.typed" in names
    assert "fastmesh/_core/http1/parser.pxd" in names and "fastmesh/_core/router.pyi" in names
    assert not any(n.endswith(".pyx") or n.endswith(".c") for n in names)   # sources stay out of the wheel
