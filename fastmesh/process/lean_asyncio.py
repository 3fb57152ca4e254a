"""`fastmesh run` imports asyncio without the `ssl` module, which asyncio imports only to offer TLS streams.

fastmesh's TLS is its own (fastmesh/_core/tls, on OpenSSL bound directly, and only when a config has a tls
table), so Python's `ssl` is needed only by code that asks for it: a plugin's https client, a tracing exporter.
Imported by asyncio, it costs every process of the instance about 1.4 MiB (the module, `_ssl`, OpenSSL's
libraries and their start-up). asyncio already treats a missing `ssl` as "no TLS": its modules keep `ssl = None`.
So asyncio is imported while `ssl` is blocked, and the first real `import ssl` afterwards hands the module to
asyncio's modules (and runs asyncio.sslproto again, whose module-level names depend on it): asyncio's TLS then
works as usual for whoever asked for it.

An embedding program imports asyncio itself and is left alone: this is only for the processes `fastmesh run`
starts.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

# No importlib.abc or importlib.util here: importlib.abc imports importlib.resources, and with it pathlib,
# tempfile, shutil, lzma, bz2 and ipaddress (over 1 MiB). Finders and loaders are protocols; these two follow them.


def import_asyncio_without_ssl() -> None:
    """Import asyncio now, without `ssl`; a no-op when asyncio or ssl is already loaded (nothing left to save)."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None       # type: ignore[assignment]  # `import ssl` raises ImportError, as asyncio expects
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]
    sys.meta_path.insert(0, _FirstSslImport())


def hand_ssl_to_asyncio(ssl: ModuleType) -> None:
    """Give asyncio's modules the `ssl` they went without."""
    for name, module in list(sys.modules.items()):
        if name.startswith("asyncio.") and module is not None and "ssl" in vars(module) and vars(module)["ssl"] is None:
            setattr(module, "ssl", ssl)
    sslproto = sys.modules.get("asyncio.sslproto")
    if sslproto is not None:
        importlib.reload(sslproto)  # its TLS names (SSLAgainErrors) are defined only when ssl imported


class _FirstSslImport:
    """Watches for the first `import ssl`; finds it as the other finders would and hands it over once run."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "ssl":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenHandOver(spec.loader)
                return spec
        return None


class _ThenHandOver:
    """The ssl module's own loader, and the hand-over once the module has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader             # as if found directly (tracebacks read source through it)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        hand_ssl_to_asyncio(module)
