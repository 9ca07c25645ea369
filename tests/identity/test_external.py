"""External names: narrowest CIDR wins (v4 and v6), DNS-learned names with TTL and a bound."""

from __future__ import annotations

import pytest

from podwire.identity.external import CidrError, CidrTable, ExternalNames
from podwire.model import UNKNOWN_EXTERNAL, DnsAnswer, IdentityKind


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


TABLE = [
    ("0.0.0.0/0", "internet"),
    ("10.96.0.0/12", "cluster-services"),
    ("203.0.113.0/24", "partner-api"),
    ("203.0.113.128/25", "partner-api-eu"),
    ("203.0.113.200/32", "partner-api-gw"),
    ("::/0", "internet6"),
    ("2001:db8::/32", "doc-net"),
    ("2001:db8:1::/48", "doc-net-1"),
]


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("8.8.8.8", "internet"),
        ("10.96.0.10", "cluster-services"),
        ("10.111.255.255", "cluster-services"),
        ("10.112.0.0", "internet"),
        ("203.0.113.5", "partner-api"),
        ("203.0.113.130", "partner-api-eu"),
        ("203.0.113.200", "partner-api-gw"),
        ("2001:db8:2::1", "doc-net"),
        ("2001:db8:1:ffff::1", "doc-net-1"),
        ("2606:4700::1", "internet6"),
    ],
)
def test_narrowest_cidr_wins(address, name):
    table = CidrTable(TABLE)
    got = table.lookup(address)
    assert got is not None and got.kind is IdentityKind.EXTERNAL and got.name == name


def test_no_catch_all_means_no_match_and_garbage_is_not_an_error():
    table = CidrTable([("192.0.2.0/24", "doc")])
    assert table.lookup("198.51.100.1") is None
    assert table.lookup("not-an-ip") is None
    assert table.lookup("2001:db8::1") is None  # v6 never matches a v4 prefix


def test_bad_cidr_names_the_entry():
    with pytest.raises(CidrError, match=r"10\.0\.0\.0/33.*office"):
        CidrTable([("10.0.0.0/33", "office")])


def test_learned_dns_name_is_used_within_its_ttl_then_forgotten():
    clock = Clock(1000.0)
    ext = ExternalNames([("10.0.0.0/8", "corp")], min_ttl_s=1.0, clock=clock)
    ext.learn([DnsAnswer(ts=1000.0, name="API.Example.com.", address="198.51.100.7", ttl=60)])
    assert ext.resolve("198.51.100.7").name == "api.example.com"
    assert ext.resolve("198.51.100.7", at=1059.0).name == "api.example.com"
    assert ext.resolve("198.51.100.7", at=1061.0) is UNKNOWN_EXTERNAL
    clock.t = 1100.0
    assert ext.resolve("198.51.100.7") is UNKNOWN_EXTERNAL
    st = ext.stats()
    assert (st.dns_hits, st.unknown, st.dns_learned) == (2, 2, 1)


def test_tiny_ttls_are_kept_for_a_floor_so_the_following_connection_is_named():
    ext = ExternalNames(min_ttl_s=30.0, clock=Clock(0.0))
    ext.learn([DnsAnswer(ts=100.0, name="cdn.example.net", address="192.0.2.50", ttl=0)])
    assert ext.resolve("192.0.2.50", at=120.0).name == "cdn.example.net"
    assert ext.resolve("192.0.2.50", at=131.0) is UNKNOWN_EXTERNAL


def test_cidr_beats_learned_name_and_learned_beats_unknown():
    ext = ExternalNames([("203.0.113.0/24", "partner-api")], clock=Clock(0.0))
    ext.learn(
        [
            DnsAnswer(ts=0.0, name="pay.partner.example", address="203.0.113.9", ttl=300),
            DnsAnswer(ts=0.0, name="cdn.example.org", address="2001:db8::99", ttl=300),
        ]
    )
    assert ext.resolve("203.0.113.9", at=1.0).name == "partner-api"
    assert ext.resolve("2001:db8::99", at=1.0).name == "cdn.example.org"
    assert ext.resolve("192.0.2.1", at=1.0) is UNKNOWN_EXTERNAL


def test_a_catch_all_names_only_what_no_dns_answer_named():
    ext = ExternalNames([("0.0.0.0/0", "internet"), ("::/0", "internet")], clock=Clock(0.0))
    ext.learn([DnsAnswer(ts=0.0, name="api.stripe.example", address="198.51.100.7", ttl=300)])
    assert ext.resolve("198.51.100.7", at=1.0).name == "api.stripe.example"
    assert ext.resolve("198.51.100.8", at=1.0).name == "internet"
    assert ext.resolve("2001:db8::1", at=1.0).name == "internet"
    assert ext.resolve("198.51.100.7", at=10_000.0).name == "internet"  # the answer's TTL ran out


def test_learned_names_are_bounded_least_recent_first():
    ext = ExternalNames(max_dns_names=100, clock=Clock(0.0))
    ext.learn(DnsAnswer(0.0, f"h{i}.example", f"198.51.100.{i}", 3600) for i in range(150))
    st = ext.stats()
    assert st.dns_names == 100 and st.dns_evicted == 50
    assert ext.resolve("198.51.100.10", at=1.0) is UNKNOWN_EXTERNAL  # evicted (oldest)
    assert ext.resolve("198.51.100.149", at=1.0).name == "h149.example"


def test_a_newer_answer_renames_the_address():
    ext = ExternalNames(clock=Clock(0.0))
    ext.learn([DnsAnswer(0.0, "old.example", "192.0.2.9", 600)])
    ext.learn([DnsAnswer(10.0, "new.example", "192.0.2.9", 600)])
    assert ext.resolve("192.0.2.9", at=11.0).name == "new.example"


def test_dns_learning_can_be_switched_off():
    ext = ExternalNames(dns=False, clock=Clock(0.0))
    assert ext.learn([DnsAnswer(0.0, "x.example", "192.0.2.9", 600)]) == 0
    assert ext.resolve("192.0.2.9", at=1.0) is UNKNOWN_EXTERNAL


def test_result_cache_is_bounded():
    ext = ExternalNames([("0.0.0.0/0", "internet")], cache_size=64)
    for i in range(1000):
        assert ext.resolve(f"198.18.{i // 256}.{i % 256}").name == "internet"
    assert len(ext._cidr_cache) <= 64


def test_learning_from_several_capture_threads_at_once_never_raises():
    import threading

    ext = ExternalNames(max_dns_names=500, clock=Clock(0.0))
    errors: list[BaseException] = []

    def learn(k: int) -> None:
        try:
            for i in range(20_000):
                ext.learn([DnsAnswer(0.0, f"h{i % 700}.example", f"198.51.{k}.{i % 700 % 256}", 60)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=learn, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ext.stats().dns_names <= 500


def test_the_catch_all_is_cached_with_the_address_and_dns_still_wins_over_it():
    ext = ExternalNames(TABLE, cache_size=16, clock=Clock(0.0))
    assert ext.resolve("198.51.100.7", at=1.0).name == "internet"
    assert ext._cidr_cache["198.51.100.7"][1].name == "internet"  # both answers kept, one probe
    ext.learn([DnsAnswer(ts=0.0, name="api.example", address="198.51.100.7", ttl=300)])
    # a learned name beats a cached catch-all
    assert ext.resolve("198.51.100.7", at=1.0).name == "api.example"
    assert ext.resolve("198.51.100.7", at=10_000.0).name == "internet"  # ...while its TTL lasts
    assert ext.resolve("203.0.113.200", at=1.0).name == "partner-api-gw"
    assert ext.resolve("2001:db8:1::5", at=1.0).name == "doc-net-1"
    assert ext.resolve("garbage", at=1.0) is UNKNOWN_EXTERNAL
    ext.add_cidr("198.51.100.0/24", "partner-b")  # a new network empties the cache
    assert ext.resolve("198.51.100.8", at=1.0).name == "partner-b"
    for i in range(100):
        assert ext.resolve(f"192.0.2.{i}", at=1.0).name == "internet"
        assert len(ext._cidr_cache) <= 16
    st = ext.stats()
    assert st.dns_hits == 1 and st.unknown == 1
