"""TLS records and handshake messages -> ClientHello / ServerHello / leaf certificate bytes.

Only the clear-text start of a handshake is read (RFC 8446 4.1, RFC 5246 7.4): nothing is
decrypted.  Every length is checked against what is left before it is used, so hostile input
ends in `TlsError` (a counted reason), never in an IndexError or a large allocation: a parser
only ever slices what it was given.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

CONTENT_CHANGE_CIPHER_SPEC: Final = 20
CONTENT_ALERT: Final = 21
CONTENT_HANDSHAKE: Final = 22
CONTENT_APPLICATION_DATA: Final = 23

HS_CLIENT_HELLO: Final = 1
HS_SERVER_HELLO: Final = 2
HS_CERTIFICATE: Final = 11

EXT_SERVER_NAME: Final = 0x0000
EXT_SUPPORTED_GROUPS: Final = 0x000A
EXT_EC_POINT_FORMATS: Final = 0x000B
EXT_SIGNATURE_ALGORITHMS: Final = 0x000D
EXT_ALPN: Final = 0x0010
EXT_SUPPORTED_VERSIONS: Final = 0x002B

# RFC 8446 4.1.3: a ServerHello with this random is a HelloRetryRequest.
HRR_RANDOM: Final = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

MAX_NAME: Final = 255  # an SNI host name or ALPN protocol longer than this is cut (counted nowhere: harmless)


class TlsError(ValueError):
    """A handshake that cannot be right; `reason` is the counter it goes to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0A0A, 0x1A1A, ... 0xFAFA): ignored by fingerprints."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True, slots=True)
class ClientHello:
    legacy_version: int
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]  # in wire order
    server_name: str | None
    supported_versions: tuple[int, ...]
    alpn: tuple[bytes, ...]
    groups: tuple[int, ...]
    point_formats: tuple[int, ...]
    signature_algorithms: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ServerHello:
    legacy_version: int
    cipher: int
    extensions: tuple[int, ...]
    selected_version: int | None  # from supported_versions (TLS 1.3); None before 1.3
    alpn: bytes | None
    retry_request: bool  # a HelloRetryRequest (the real ServerHello follows)

    @property
    def version(self) -> int:
        return self.selected_version if self.selected_version is not None else self.legacy_version


class _Reader:
    """Bounds-checked big-endian reads over `buf[pos:end]`."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def u8(self) -> int:
        if self.pos >= self.end:
            raise TlsError("truncated")
        self.pos += 1
        return self.buf[self.pos - 1]

    def u16(self) -> int:
        if self.end - self.pos < 2:
            raise TlsError("truncated")
        p = self.pos
        self.pos = p + 2
        return (self.buf[p] << 8) | self.buf[p + 1]

    def u24(self) -> int:
        if self.end - self.pos < 3:
            raise TlsError("truncated")
        p = self.pos
        self.pos = p + 3
        return (self.buf[p] << 16) | (self.buf[p + 1] << 8) | self.buf[p + 2]

    def take(self, n: int) -> bytes:
        if n < 0 or self.end - self.pos < n:
            raise TlsError("truncated")
        p = self.pos
        self.pos = p + n
        return self.buf[p : p + n]

    def sub(self, n: int) -> _Reader:
        """A reader over the next `n` bytes (a length-prefixed vector); this one skips them."""
        if n < 0 or self.end - self.pos < n:
            raise TlsError("truncated")
        r = _Reader(self.buf, self.pos, self.pos + n)
        self.pos += n
        return r

    def u16_list(self, n: int) -> tuple[int, ...]:
        if n & 1:
            raise TlsError("malformed")
        r = self.sub(n)  # bounds-checked; one unpack for the list (a read per value cost ~1/3 of a hello)
        return struct.unpack_from(f"!{n // 2}H", r.buf, r.pos)


def _name(raw: bytes) -> str:
    return raw[:MAX_NAME].decode("ascii", "replace")


def parse_client_hello(body: bytes) -> ClientHello:
    """The body of a ClientHello handshake message (after type and 3-byte length)."""
    r = _Reader(body)
    legacy_version = r.u16()
    r.take(32)  # random
    r.take(r.u8())  # legacy_session_id
    ciphers = r.u16_list(r.u16())
    r.take(r.u8())  # compression methods
    server_name: str | None = None
    supported_versions: tuple[int, ...] = ()
    alpn: tuple[bytes, ...] = ()
    groups: tuple[int, ...] = ()
    point_formats: tuple[int, ...] = ()
    sig_algs: tuple[int, ...] = ()
    extensions: list[int] = []
    if r.left():  # extensions are optional before TLS 1.3 (RFC 5246 7.4.1.2)
        exts = r.sub(r.u16())
        while exts.left():
            ext_type = exts.u16()
            ext = exts.sub(exts.u16())
            extensions.append(ext_type)
            if ext_type == EXT_SERVER_NAME and ext.left():
                names = ext.sub(ext.u16())
                while names.left():
                    kind = names.u8()
                    value = names.take(names.u16())
                    if kind == 0 and server_name is None:  # host_name
                        server_name = _name(value)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                n = ext.u8()
                supported_versions = ext.u16_list(n)
            elif ext_type == EXT_ALPN:
                protos = ext.sub(ext.u16())
                found: list[bytes] = []
                while protos.left():
                    found.append(protos.take(protos.u8())[:MAX_NAME])
                alpn = tuple(found)
            elif ext_type == EXT_SUPPORTED_GROUPS:
                groups = ext.u16_list(ext.u16())
            elif ext_type == EXT_EC_POINT_FORMATS:
                point_formats = tuple(ext.take(ext.u8()))
            elif ext_type == EXT_SIGNATURE_ALGORITHMS:
                sig_algs = ext.u16_list(ext.u16())
    return ClientHello(
        legacy_version=legacy_version,
        ciphers=ciphers,
        extensions=tuple(extensions),
        server_name=server_name,
        supported_versions=supported_versions,
        alpn=alpn,
        groups=groups,
        point_formats=point_formats,
        signature_algorithms=sig_algs,
    )


def partial_server_name(body: bytes) -> str | None:
    """The SNI from the first part of a ClientHello body whose rest never arrived, or None.

    Extensions are walked as far as they are whole; the lists a fingerprint needs are not (they
    would be cut), so this is the only fact taken from a cut hello.  Never raises."""
    try:
        r = _Reader(body)
        r.take(2 + 32)  # legacy_version, random
        r.take(r.u8())  # legacy_session_id
        r.take(r.u16())  # cipher suites
        r.take(r.u8())  # compression methods
        r.u16()  # the extensions' declared length: more than what arrived
        while r.left() >= 4:
            ext_type, size = r.u16(), r.u16()
            if size > r.left():
                return None  # cut inside this extension
            ext = r.sub(size)
            if ext_type == EXT_SERVER_NAME and ext.left():
                names = ext.sub(ext.u16())
                while names.left():
                    kind = names.u8()
                    value = names.take(names.u16())
                    if kind == 0:
                        return _name(value)
                return None
    except TlsError:
        return None
    return None


def parse_server_hello(body: bytes) -> ServerHello:
    """The body of a ServerHello handshake message."""
    r = _Reader(body)
    legacy_version = r.u16()
    random = r.take(32)
    r.take(r.u8())  # legacy_session_id_echo
    cipher = r.u16()
    r.u8()  # compression method
    selected: int | None = None
    alpn: bytes | None = None
    extensions: list[int] = []
    if r.left():
        exts = r.sub(r.u16())
        while exts.left():
            ext_type = exts.u16()
            ext = exts.sub(exts.u16())
            extensions.append(ext_type)
            if ext_type == EXT_SUPPORTED_VERSIONS:
                selected = ext.u16()
            elif ext_type == EXT_ALPN:
                protos = ext.sub(ext.u16())
                alpn = protos.take(protos.u8())[:MAX_NAME]
    return ServerHello(
        legacy_version=legacy_version,
        cipher=cipher,
        extensions=tuple(extensions),
        selected_version=selected,
        alpn=alpn,
        retry_request=random == HRR_RANDOM,
    )


def leaf_certificate(body: bytes, max_der: int) -> bytes | None:
    """The first (leaf) DER certificate of a TLS <= 1.2 Certificate message body; None if empty."""
    r = _Reader(body)
    chain = r.sub(r.u24())
    if not chain.left():
        return None
    n = chain.u24()
    if n > max_der:
        raise TlsError("oversize")
    return chain.take(n)
