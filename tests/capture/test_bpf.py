"""The kernel filter: libpcap's own compilation, and its verdicts on crafted frames."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, raw

from podwire.capture.bpf import (
    SNAPLEN_CONTROL,
    SNAPLEN_DNS,
    BpfError,
    FilterOptions,
    compile_program,
    expression,
)
from tests.capture.bpfvm import run

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = IP(src="10.0.0.1", dst="10.0.0.2")
V6 = IPv6(src="fd00::1", dst="fd00::2")


def tcp(flags: str) -> TCP:
    return TCP(sport=40000, dport=80, flags=flags)


# (case, frame, passes without DNS, passes with DNS)
VERDICTS: list[tuple[str, Packet, bool, bool]] = [
    ("v4 syn", ETH / V4 / tcp("S"), True, True),
    ("v4 syn-ack", ETH / V4 / tcp("SA"), True, True),
    ("v4 fin-ack", ETH / V4 / tcp("FA"), True, True),
    ("v4 fin with data", ETH / V4 / tcp("FPA") / (b"x" * 1000), True, True),
    ("v4 rst", ETH / V4 / tcp("R"), True, True),
    ("v4 rst-ack", ETH / V4 / tcp("RA"), True, True),
    ("v4 ack", ETH / V4 / tcp("A"), False, False),
    ("v4 data", ETH / V4 / tcp("PA") / (b"x" * 1400), False, False),
    ("v4 urg-ece-cwr", ETH / V4 / tcp("UAEC"), False, False),
    (
        "v4 syn with ip options",
        ETH / IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR()]) / tcp("S"),
        True,
        True,
    ),
    (
        "v4 non-first fragment",
        ETH / IP(src="10.0.0.1", dst="10.0.0.2", proto=6, frag=10) / (b"\x02" * 40),
        False,
        False,
    ),
    ("v6 syn", ETH / V6 / tcp("S"), True, True),
    ("v6 fin", ETH / V6 / tcp("FA"), True, True),
    ("v6 rst", ETH / V6 / tcp("R"), True, True),
    ("v6 ack", ETH / V6 / tcp("A"), False, False),
    ("v6 data", ETH / V6 / tcp("PA") / (b"y" * 1200), False, False),
    # Documented limit: IPv6 with extension headers before TCP is not passed by the kernel filter.
    ("v6 syn behind hop-by-hop", ETH / V6 / IPv6ExtHdrHopByHop() / tcp("S"), False, False),
    ("vlan v4 syn", ETH / Dot1Q(vlan=9) / V4 / tcp("S"), True, True),
    ("vlan v4 ack", ETH / Dot1Q(vlan=9) / V4 / tcp("A") / b"zz", False, False),
    ("vlan v6 fin", ETH / Dot1Q(vlan=9) / V6 / tcp("F"), True, True),
    ("vlan v6 ack", ETH / Dot1Q(vlan=9) / V6 / tcp("A"), False, False),
    ("802.1ad v4 rst", ETH / Dot1AD(vlan=9) / V4 / tcp("R"), True, True),
    ("udp src 53", ETH / V4 / UDP(sport=53, dport=40000) / b"answer", False, True),
    ("udp6 src 53", ETH / V6 / UDP(sport=53, dport=40000) / b"answer", False, True),
    ("vlan udp src 53", ETH / Dot1Q(vlan=3) / V4 / UDP(sport=53, dport=40000) / b"answer", False, True),
    ("udp dst 53 (a query)", ETH / V4 / UDP(sport=40000, dport=53) / b"query", False, False),
    ("icmp", ETH / V4 / ICMP(), False, False),
    ("arp", ETH / ARP(), False, False),
]


@pytest.mark.parametrize(("case", "pkt", "plain", "with_dns"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_filter_passes_exactly_the_control_segments_and_optionally_dns_answers(
    case: str, pkt: Packet, plain: bool, with_dns: bool
) -> None:
    frame = raw(pkt)
    no_dns = compile_program(FilterOptions())
    dns = compile_program(FilterOptions(dns_answers=True))
    assert run(no_dns.instructions, frame) == (SNAPLEN_CONTROL if plain else 0)
    # a control segment keeps the short copy with DNS on; only DNS answers get the long one
    assert run(dns.instructions, frame) == (SNAPLEN_CONTROL if plain else SNAPLEN_DNS if with_dns else 0)


def test_expression_is_built_from_parts_and_repeated_behind_one_vlan_tag() -> None:
    plain = expression(FilterOptions())
    assert "udp" not in plain
    assert plain.count("tcp[tcpflags]") == 2 and plain.count("ip6[53]") == 2
    assert "or (vlan and (" in plain
    with_dns = expression(FilterOptions(dns_answers=True))
    assert with_dns.count("udp src port 53") == 2
    extra = expression(FilterOptions(extra_parts=("tcp port 443",)))
    assert extra.count("(tcp port 443)") == 2


def test_extra_parts_widen_the_filter_for_later_features() -> None:
    # The hook TLS records will use: an extra clause is ORed in, and the control parts stay.
    prog = compile_program(FilterOptions(extra_parts=("tcp dst port 443",)))
    assert run(prog.instructions, raw(ETH / V4 / TCP(dport=443, flags="PA") / b"\x16\x03\x01")) > 0
    assert run(prog.instructions, raw(ETH / V4 / TCP(dport=80, flags="PA") / b"x")) == 0
    assert run(prog.instructions, raw(ETH / V4 / TCP(dport=80, flags="S"))) > 0


def _tcpdump(linktype: str, snaplen: int, text: str) -> tuple[tuple[int, ...], ...]:
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    out = subprocess.run(
        [tcpdump, "-ddd", "-y", linktype, "-s", str(snaplen), text],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    return tuple(tuple(int(v) for v in line.split()) for line in out[1 : 1 + int(out[0])])


def _chained(stages: list[tuple[tuple[int, ...], ...]]) -> tuple[tuple[int, ...], ...]:
    """tcpdump's programs of the stages, each reject but the last made a jump past its stage."""
    out: list[tuple[int, ...]] = []
    for n, prog in enumerate(stages):
        for i, (code, jt, jf, k) in enumerate(prog):
            if code == 0x06 and k == 0 and n < len(stages) - 1:
                out.append((0x05, 0, 0, len(prog) - i - 1))
            else:
                out.append((code, jt, jf, k))
    return tuple(out)


@pytest.mark.parametrize("dns", [False, True])
@pytest.mark.parametrize("extra", [False, True])
def test_bytecode_is_tcpdumps_own_libpcap_compilation_of_each_stage(dns: bool, extra: bool) -> None:
    opts = FilterOptions(
        dns_answers=dns, extra_parts=("tcp dst port 443",) if extra else (), extra_snaplen=9000
    )
    prog = compile_program(opts)
    payload = [9000] if extra else [SNAPLEN_DNS] if dns else []  # DNS and extra parts share a stage
    assert [s.snaplen for s in prog.stages] == [SNAPLEN_CONTROL, *payload]
    theirs = [_tcpdump("EN10MB", s.snaplen, s.expression) for s in prog.stages]
    assert [s.start for s in prog.stages] == [sum(len(t) for t in theirs[:n]) for n in range(len(theirs))]
    assert prog.instructions == _chained(theirs)
    assert prog.snaplen == max(s.snaplen for s in prog.stages)
    assert prog.packed() and len(prog.packed()) == 8 * len(prog.instructions)


def test_each_kind_of_frame_gets_its_own_accept_length_and_reject_stays_zero() -> None:
    # With TLS on, a SYN must not be copied 24 KiB into the ring (one `ret #snaplen` did that).
    prog = compile_program(
        FilterOptions(dns_answers=True, extra_parts=("tcp dst port 443",), extra_snaplen=9000)
    )
    rets = {k for code, _jt, _jf, k in prog.instructions if code == 0x06}
    assert rets == {0, SNAPLEN_CONTROL, 9000}
    assert run(prog.instructions, raw(ETH / V4 / tcp("S"))) == SNAPLEN_CONTROL
    assert run(prog.instructions, raw(ETH / Dot1Q(vlan=9) / V6 / tcp("F"))) == SNAPLEN_CONTROL
    # DNS shares the payload stage (a DNS answer is copied whole either way: it is under 4 KiB)
    assert run(prog.instructions, raw(ETH / V4 / UDP(sport=53, dport=4000) / b"a")) == 9000
    hello = ETH / V4 / TCP(sport=40000, dport=443, flags="PA") / b"\x16\x03\x01"
    assert run(prog.instructions, raw(hello)) == 9000
    # a control segment to port 443 is judged by the first stage: the short copy
    assert run(prog.instructions, raw(ETH / V4 / TCP(sport=40000, dport=443, flags="S"))) == SNAPLEN_CONTROL
    assert run(prog.instructions, raw(ETH / V4 / tcp("PA") / b"x")) == 0
    assert run(prog.instructions, raw(ETH / ARP())) == 0


def test_raw_ip_program_matches_tcpdump_and_has_no_vlan_part() -> None:
    prog = compile_program(FilterOptions(extra_parts=("tcp dst port 443",)), linktype=12)
    assert "vlan" not in prog.expression
    assert prog.instructions == _chained([_tcpdump("RAW", s.snaplen, s.expression) for s in prog.stages])
    assert run(prog.instructions, raw(V4 / tcp("S"))) == SNAPLEN_CONTROL
    assert run(prog.instructions, raw(V6 / tcp("R"))) == SNAPLEN_CONTROL
    assert run(prog.instructions, raw(V4 / tcp("A"))) == 0


def test_compiling_leaves_scapy_out_of_the_agent_process() -> None:
    # scapy is ~40 MB resident; the compiler runs in a child that exits (the program is the same:
    # the tcpdump comparisons above go through compile_program too)
    code = (
        "import sys\n"
        "from podwire.capture.bpf import FilterOptions, compile_program\n"
        "prog = compile_program(FilterOptions(dns_answers=True))\n"
        "assert prog.instructions and prog.instructions[-1][0] == 6\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'scapy'], 'scapy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_filter_libpcap_refuses_is_one_bpf_error_line() -> None:
    with pytest.raises(BpfError) as info:
        compile_program(FilterOptions(extra_parts=("tcp[999999999999]",)))
    assert "\n" not in str(info.value) and "cannot compile the capture filter" in str(info.value)
