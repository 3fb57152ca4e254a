"""The compiled data path. Importing it without a build fails loudly: there is no pure-Python fallback."""
try:
    import fastmesh._core.build_info  # noqa: F401
except ImportError as exc:  # pragma: no cover - only on an unbuilt checkout
    raise ImportError(
        "fastmesh's compiled core is missing (" + str(exc) + "). "
        "Install with `pip install .` (or build in place: `python setup.py build_ext --inplace`)."
    ) from exc
