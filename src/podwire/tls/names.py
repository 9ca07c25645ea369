"""Version and cipher suite names as Wireshark and the IANA registry write them; unknown codes as hex."""

from __future__ import annotations

from typing import Final

from podwire.tls.ciphers import CIPHER_SUITES

VERSIONS: Final[dict[int, str]] = {
    0x0002: "SSL 2.0",
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}
# Deprecated by RFC 8996 (TLS 1.0/1.1) and RFC 7568 (SSL 3.0), or never safe (SSL 2.0).
DEPRECATED_VERSIONS: Final = frozenset((0x0002, 0x0300, 0x0301, 0x0302))


def hex16(value: int) -> str:
    return f"0x{value:04x}"


def version_name(value: int) -> str:
    return VERSIONS.get(value) or hex16(value)


def cipher_name(value: int) -> str:
    return CIPHER_SUITES.get(value) or hex16(value)
