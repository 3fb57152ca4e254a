"""Wiring: turns validated config into _core objects, one module per hop. The only Python code that builds them."""
