"""TLS test helpers: a throwaway PKI (trustme), TLS backends, and clients that report how a handshake ended."""
from __future__ import annotations

import asyncio
import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Pem:
    """A certificate and key written to files."""
    cert: str
    key: str


class Pki:
    """A CA (and files under `root`) issuing server and client certificates; `other` is an unrelated CA."""

    def __init__(self, root: Path) -> None:
        import trustme
        self.root = root
        self.ca = trustme.CA()
        self.ca_file = str(root / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.other = trustme.CA()
        self.other_ca_file = str(root / "other-ca.pem")
        self.other.cert_pem.write_to_path(self.other_ca_file)
        self._n = 0

    def issue(self, *names: str, ca: Any = None, expired: bool = False, key_type: str = "ecdsa") -> Pem:
        """A certificate for names (DNS names, "spiffe://..." URIs, IP literals) and its key, as files."""
        import trustme
        self._n += 1
        issuer = ca or self.ca
        kwargs: dict[str, Any] = {"key_type": trustme.KeyType.ECDSA if key_type == "ecdsa" else trustme.KeyType.RSA}
        if expired:
            kwargs["not_after"] = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
            kwargs["not_before"] = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
        leaf = issuer.issue_cert(*names, **kwargs)
        pem = Pem(str(self.root / f"cert{self._n}.pem"), str(self.root / f"key{self._n}.pem"))
        with open(pem.cert, "wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        leaf.private_key_pem.write_to_path(pem.key)
        return pem

    def client_context(self, cert: Pem | None = None, *, alpn: list[str] | None = None,
                       maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A client context trusting our CA (optionally with a client certificate)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if maximum is not None:
            ctx.maximum_version = maximum
        return ctx

    def server_context(self, cert: Pem, *, client_ca: str | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class TlsEchoBackend:
    """A TLS server on 127.0.0.1 that echoes what it receives, prefixed once with its banner (to tell backends
    apart), and records the client certificate's URI names it saw."""

    def __init__(self, ctx: ssl.SSLContext, banner: bytes = b"") -> None:
        self.ctx = ctx
        self.banner = banner
        self.server: asyncio.AbstractServer | None = None
        self.peers: list[Any] = []
        self.port = 0

    async def start(self) -> TlsEchoBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peercert"))
        try:
            if self.banner:
                writer.write(self.banner)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof() if writer.can_write_eof() else None
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
