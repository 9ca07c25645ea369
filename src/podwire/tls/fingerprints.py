"""JA3 / JA3S (Salesforce, as Wireshark's `tls.handshake.ja3`/`ja3s`) and JA4 (FoxIO) fingerprints.

JA3:  md5("version,ciphers,extensions,groups,point_formats"), decimal values joined by "-",
      GREASE (RFC 8701) left out of every list.
JA3S: md5("version,cipher,extensions").
JA4:  "t{version}{d|i}{ciphers:02}{extensions:02}{alpn}_{sha256(sorted ciphers)[:12]}_
      {sha256(sorted extensions without SNI/ALPN + "_" + signature algorithms)[:12]}".
MD5 and SHA-256 here are fingerprints, not security.
"""

from __future__ import annotations

import hashlib
from typing import Final

from podwire.tls.handshake import EXT_ALPN, EXT_SERVER_NAME, ClientHello, ServerHello, is_grease

_JA4_VERSIONS: Final[dict[int, str]] = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
}
_EMPTY_HASH: Final = "000000000000"


def _dash(values: tuple[int, ...]) -> str:
    return "-".join(str(v) for v in values if not is_grease(v))


def ja3_string(hello: ClientHello) -> str:
    return ",".join(
        (
            str(hello.legacy_version),
            _dash(hello.ciphers),
            _dash(hello.extensions),
            _dash(hello.groups),
            "-".join(str(v) for v in hello.point_formats),
        )
    )


def ja3(hello: ClientHello) -> str:
    return hashlib.md5(ja3_string(hello).encode(), usedforsecurity=False).hexdigest()


def ja3s_string(hello: ServerHello) -> str:
    return f"{hello.legacy_version},{hello.cipher},{_dash(hello.extensions)}"


def ja3s(hello: ServerHello) -> str:
    return hashlib.md5(ja3s_string(hello).encode(), usedforsecurity=False).hexdigest()


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _alpn_chars(alpn: tuple[bytes, ...]) -> str:
    if not alpn or not alpn[0]:
        return "00"
    first, last = alpn[0][0], alpn[0][-1]
    if chr(first).isascii() and chr(first).isalnum() and chr(last).isascii() and chr(last).isalnum():
        return chr(first) + chr(last)
    # non-alphanumeric: the first hex digit of the first byte and the last of the last (JA4 spec)
    return f"{first:02x}"[0] + f"{last:02x}"[-1]


def ja4(hello: ClientHello) -> str:
    versions = [v for v in hello.supported_versions if not is_grease(v)]
    top = max(versions) if versions else hello.legacy_version
    ciphers = [c for c in hello.ciphers if not is_grease(c)]
    exts = [e for e in hello.extensions if not is_grease(e)]
    part_a = (
        f"t{_JA4_VERSIONS.get(top, '00')}{'d' if EXT_SERVER_NAME in exts else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{_alpn_chars(hello.alpn)}"
    )
    part_b = _sha12(",".join(sorted(f"{c:04x}" for c in ciphers))) if ciphers else _EMPTY_HASH
    counted = sorted(f"{e:04x}" for e in exts if e not in (EXT_SERVER_NAME, EXT_ALPN))
    if counted:
        text = ",".join(counted)
        sigs = [f"{s:04x}" for s in hello.signature_algorithms if not is_grease(s)]
        if sigs:
            text += "_" + ",".join(sigs)
        part_c = _sha12(text)
    else:
        part_c = _EMPTY_HASH
    return f"{part_a}_{part_b}_{part_c}"
