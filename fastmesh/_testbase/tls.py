"""TLS test helpers: a throwaway PKI (trustme), installing its files as rotation tools do, TLS backends, and clients
that report how a handshake ended."""
from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Pem:
    """A certificate and key written to files."""
    cert: str
    key: str


def install(pem: Pem, live: Pem, *, renamed: bool = False) -> None:
    """Put pem's key, then its certificate, at live's paths: rewritten in place (truncated and written, as `cp`
    does) or, renamed, written beside and renamed into place (atomic, as cert-manager and certbot do)."""
    for src, dst in ((pem.key, live.key), (pem.cert, live.cert)):
        if renamed:
            shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
        else:
            shutil.copyfile(src, dst)


class _Ca:
    """A certificate authority: its key and self-signed certificate (cryptography)."""

    def __init__(self, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     # Key identifiers: Python 3.13's default client context verifies strictly (RFC 5280) and
                     # refuses a chain without them.
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                    critical=False)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        return self.cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    """A CA (files under `root`) issuing server and client certificates; `other` is an unrelated CA."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = _Ca("fastmesh test CA")
        self.ca_file = str(root / "ca.pem")
        Path(self.ca_file).write_bytes(self.ca.pem())
        self.other = _Ca("someone else's CA")
        self.other_ca_file = str(root / "other-ca.pem")
        Path(self.other_ca_file).write_bytes(self.other.pem())
        self._n = 0

    def issue(self, *names: str, ca: _Ca | None = None, expired: bool = False, key_type: str = "ecdsa",
              not_after: datetime.datetime | None = None) -> Pem:
        """A certificate for names (DNS names, "*.x" wildcards, "spiffe://..." URIs, IP literals) and its key,
        written as files (the certificate file holds the leaf only; the CA file is the trust anchor). It is valid
        for 90 days, or until `not_after`."""
        import ipaddress
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        self._n += 1
        issuer = ca or self.ca
        key: Any = ec.generate_private_key(ec.SECP256R1()) if key_type == "ecdsa" else \
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sans: list[Any] = []
        for name in names:
            if "://" in name:
                sans.append(x509.UniformResourceIdentifier(name))
            else:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    sans.append(x509.DNSName(name))
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) if expired else \
            (now - datetime.timedelta(days=1), not_after or now + datetime.timedelta(days=90))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
                .issuer_name(issuer.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                               critical=False)
                .sign(issuer.key, hashes.SHA256()))
        pem = Pem(str(self.root / f"cert{self._n}.pem"), str(self.root / f"key{self._n}.pem"))
        Path(pem.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        Path(pem.key).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
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
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TlsEchoBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peercert"))
        self.writers.add(writer)
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
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        """Stop listening and cut the connections still open (wait_closed() waits for them from 3.12 on)."""
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            await self.server.wait_closed()
