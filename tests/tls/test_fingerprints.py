"""JA3 and JA4 against values a public fingerprinting service published for one Chrome ClientHello
(its ja3_text, ja3_hash, ja4 and ja4_ro: the ciphers, extensions and signature algorithms in wire
order).  tshark 4.0 has no JA4, so this is JA4's independent check; JA3 is also checked against
tshark on real pcaps (test_tls_live, test_replay_split)."""

from __future__ import annotations

from podwire.tls import fingerprints
from podwire.tls.handshake import ClientHello


def _hex(text: str) -> tuple[int, ...]:
    return tuple(int(x, 16) for x in text.split(","))


CHROME = ClientHello(
    legacy_version=0x0303,
    ciphers=_hex("1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035"),
    extensions=_hex("002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b"),
    server_name="tls.browserleaks.com",
    supported_versions=(0x0304, 0x0303),
    alpn=(b"h2", b"http/1.1"),
    groups=(4588, 29, 23, 24),
    point_formats=(0,),
    signature_algorithms=_hex("0403,0804,0401,0503,0805,0501,0806,0601"),
)


def test_ja4_of_a_published_chrome_hello() -> None:
    assert fingerprints.ja4(CHROME) == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def test_ja3_of_a_published_chrome_hello() -> None:
    assert fingerprints.ja3_string(CHROME) == (
        "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,"
        "45-51-16-65037-23-17613-0-11-10-43-65281-35-18-5-13-27,4588-29-23-24,0"
    )
    assert fingerprints.ja3(CHROME) == "98487aa16281980e7d1120d399efb6a4"


def test_grease_is_left_out_of_both() -> None:
    greased = ClientHello(
        legacy_version=CHROME.legacy_version,
        ciphers=(0x2A2A, *CHROME.ciphers),
        extensions=(0x0A0A, *CHROME.extensions, 0xFAFA),
        server_name=CHROME.server_name,
        supported_versions=(0x7A7A, *CHROME.supported_versions),
        alpn=CHROME.alpn,
        groups=(0x3A3A, *CHROME.groups),
        point_formats=CHROME.point_formats,
        signature_algorithms=CHROME.signature_algorithms,
    )
    assert fingerprints.ja4(greased) == fingerprints.ja4(CHROME)
    assert fingerprints.ja3(greased) == fingerprints.ja3(CHROME)
