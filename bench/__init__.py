"""Benchmarks for fastmesh: micro (pytest-benchmark) and macro (side-by-side proxy runs)."""
