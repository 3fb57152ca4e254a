"""Micro-benchmarks (pytest-benchmark): a package so their module names never clash with tests/ files."""
