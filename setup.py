"""Build fastmesh: one C extension per fastmesh/_core .pyx file, cythonized here (uvloop's way).

Extra build_ext options:
  --cython-always  re-run Cython even when the generated .c file looks fresh
  --annotate       write Cython's HTML annotation next to each .pyx (yellow = Python work)
  --debug-core     compile with FASTMESH_DEBUG=1 (lifetime counters for leak checks)
  --no-stats       compile with FASTMESH_STATS=0 (data-path counters compiled out; also env FASTMESH_STATS=0),
                   only for measuring what counting costs (bench/metrics_overhead.py)
"""
import glob
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.extension import Extension

CYTHON_RANGE = ">=3.0,<3.3"
HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    exts = []
    for pyx in sorted(glob.glob("fastmesh/_core/**/*.pyx", recursive=True)):
        name = pyx[:-4].replace(os.sep, ".")
        exts.append(Extension(
            name, [pyx],
            extra_compile_args=["-O2", "-fno-strict-aliasing", "-Wno-unused-function"],
        ))
    return exts


def _env_changed(env):
    # Cython regenerates a .c file only when a source is newer, not when compile_time_env differs: remember the
    # last switches next to the build and force a full cythonize when they change.
    stamp = os.path.join(HERE, "build", "compile_time_env")
    text = repr(sorted(env.items()))
    try:
        with open(stamp) as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with open(stamp, "w") as f:
        f.write(text)
    return True


class build_ext(_build_ext):
    user_options = _build_ext.user_options + [
        ("cython-always", None, "run Cython even if the .c file is newer"),
        ("annotate", None, "write Cython HTML annotation"),
        ("debug-core", None, "compile with FASTMESH_DEBUG=1"),
        ("no-stats", None, "compile with FASTMESH_STATS=0 (data-path counters compiled out)"),
    ]
    boolean_options = _build_ext.boolean_options + ["cython-always", "annotate", "debug-core", "no-stats"]

    def initialize_options(self):
        super().initialize_options()
        self.cython_always = False
        self.annotate = False
        self.debug_core = bool(int(os.environ.get("FASTMESH_DEBUG", "0") or 0))
        self.no_stats = not int(os.environ.get("FASTMESH_STATS", "1") or 1)

    def finalize_options(self):
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1
        from packaging.specifiers import SpecifierSet
        import Cython
        if Cython.__version__ not in SpecifierSet(CYTHON_RANGE):
            raise RuntimeError(f"fastmesh needs Cython {CYTHON_RANGE}, found {Cython.__version__}")
        from Cython.Build import cythonize
        env = {"FASTMESH_DEBUG": 1 if self.debug_core else 0, "FASTMESH_STATS": 0 if self.no_stats else 1}
        changed = _env_changed(env)
        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            compiler_directives={
                "language_level": 3,
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
                "embedsignature": True,
            },
            compile_time_env=env,
            annotate=self.annotate,
            force=self.cython_always or changed,
            nthreads=1,
            quiet=True,
        )
        super().finalize_options()


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext})
