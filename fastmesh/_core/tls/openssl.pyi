"""Type stub for fastmesh._core.tls.openssl: the OpenSSL binding, resolved on first use (load())."""

MIN_VERSION: int
library_path: str | None
version_number: int
error: str | None

def load() -> None: ...
def available() -> bool: ...
def version() -> tuple[int, int, int] | None: ...
