"""Real OpenSSL handshakes in memory (Python's ssl over MemoryBIO) and test certificates.

The bytes are what OpenSSL puts on the wire; tests feed them to the assembler as TCP payloads.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOT_AFTER = dt.datetime(2031, 5, 17, 12, 30, 0, tzinfo=dt.UTC)
NOT_BEFORE = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@dataclass(frozen=True)
class TestCert:
    cert_pem: bytes
    key_pem: bytes
    subject: str
    issuer: str
    not_after: dt.datetime

    def write(self, directory: Path) -> tuple[Path, Path]:
        cert, key = directory / "cert.pem", directory / "key.pem"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


def make_cert(
    cn: str = "web.podwire.test",
    sans: tuple[str, ...] = ("web.podwire.test", "alt.podwire.test"),
    ips: tuple[str, ...] = ("10.1.2.3",),
    not_after: dt.datetime = NOT_AFTER,
) -> TestCert:
    """A self-issued leaf signed by a throw-away CA (so subject and issuer differ)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podwire test CA")])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    san = [x509.DNSName(s) for s in sans] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return TestCert(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        subject.rfc4514_string(),
        ca_name.rfc4514_string(),
        not_after,
    )


@dataclass
class Flight:
    """The clear bytes each side sent, in order (each entry one write)."""

    client: list[bytes]
    server: list[bytes]


def handshake(
    cert: TestCert,
    tmp: Path,
    *,
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    sni: str | None = "web.podwire.test",
    alpn: tuple[str, ...] = (),
    server_alpn: tuple[str, ...] = ("h2", "http/1.1"),
    ciphers: str | None = None,  # the client's TLS <= 1.2 offer, in OpenSSL names
) -> Flight:
    """Run a full handshake between two OpenSSL objects in memory; returns what went each way."""
    cert_file, key_file = cert.write(tmp)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    server_ctx.minimum_version = server_ctx.maximum_version = version
    if server_alpn:
        server_ctx.set_alpn_protocols(list(server_alpn))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.maximum_version = version
    if alpn:
        client_ctx.set_alpn_protocols(list(alpn))
    if ciphers is not None:
        client_ctx.set_ciphers(ciphers)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    flight = Flight([], [])
    done = [False, False]
    for _ in range(10):
        for i, (obj, out, peer_in, log) in enumerate(
            ((client, c_out, s_in, flight.client), (server, s_out, c_in, flight.server))
        ):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                log.append(data)
                peer_in.write(data)
        if all(done):
            break
    assert all(done), "handshake did not finish"
    return flight
