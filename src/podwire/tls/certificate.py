"""The leaf certificate's facts, parsed by `cryptography` (no hand-written X.509).

`cryptography` is imported at the first certificate, not with the module: TLS insight is on by
default, and an agent that never sees a TLS <= 1.2 certificate need not keep it resident
(issue 13: ~4 MB of the idle agent's RSS)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: float  # unix seconds
    not_after: float


MAX_SANS = 64  # a certificate with more SANs keeps the first 64 (records stay small)


def parse_der(der: bytes) -> CertificateFacts:
    """Raises ValueError (cryptography's error for bad DER) when `der` is not a certificate."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        sans.extend(ext.get_values_for_type(x509.DNSName))
        sans.extend(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))
    return CertificateFacts(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=tuple(sans[:MAX_SANS]),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )
