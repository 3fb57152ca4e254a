"""Test helpers shipped with fastmesh: real backends and ports on 127.0.0.1 for tests of the proxy."""
