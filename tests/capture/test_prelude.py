"""The interface prelude in front of the libpcap programs, judged by the classic-BPF interpreter.

The live tests prove the same verdicts in the kernel (one socket, frames of pod veths only)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from podwire.capture.bpf import LINKTYPE_RAW, SNAPLEN_CONTROL, FilterOptions, compile_program
from podwire.capture.prelude import BPF_MAXINSNS, DROP, LEAF, Insn, per_interface
from tests.capture.bpfvm import run

SYN = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="S")
ACK = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="A")
ETH_SYN = raw(Ether() / SYN)
ETH_ACK = raw(Ether() / ACK)
Programs = tuple[tuple[Insn, ...], tuple[Insn, ...]]  # Ethernet, RAW


@pytest.fixture(scope="module")
def programs() -> Programs:
    opts = FilterOptions()
    return compile_program(opts).instructions, compile_program(opts, linktype=LINKTYPE_RAW).instructions


def test_no_interfaces_drops_everything() -> None:
    assert per_interface([([], [DROP])]) == (DROP,)
    assert run(per_interface([]), ETH_SYN, ifindex=3) == 0


@pytest.mark.parametrize("n_eth", [1, 2, LEAF, LEAF + 1, 250, 1000])
def test_each_interface_runs_the_program_of_its_link_type(programs: Programs, n_eth: int) -> None:
    eth_prog, raw_prog = programs
    eth_ifs = [10 + 3 * i for i in range(n_eth)]  # scattered, never 0 or 1
    raw_ifs = [5, 7]
    prog = per_interface([(eth_ifs, eth_prog), (raw_ifs, raw_prog)])
    assert len(prog) <= BPF_MAXINSNS
    for jump in prog[: len(prog) - len(eth_prog) - len(raw_prog)]:
        assert jump[1] <= 255 and jump[2] <= 255  # conditional jumps stay in reach
    for ifindex in eth_ifs if n_eth <= 250 else eth_ifs[::7]:
        assert run(prog, ETH_SYN, ifindex) == SNAPLEN_CONTROL
        assert run(prog, ETH_SYN, ifindex) == SNAPLEN_CONTROL
        assert run(prog, ETH_ACK, ifindex) == 0  # the program still judges the frame
        assert run(prog, raw(SYN), ifindex) == 0  # an IP packet read as Ethernet: no
    for ifindex in raw_ifs:
        assert run(prog, raw(SYN), ifindex) == SNAPLEN_CONTROL
        assert run(prog, raw(ACK), ifindex) == 0
    for other in (1, 2, 6, 11, eth_ifs[-1] + 1, 0xFFFF):  # lo, eth0, the bridge...: dropped
        assert run(prog, ETH_SYN, other) == 0
        assert run(prog, raw(SYN), other) == 0


def test_the_lookup_costs_a_few_instructions_per_frame_not_one_per_pod(programs: Programs) -> None:
    # Every frame of the node runs the prelude (eth0 bulk too): 250 pods must not mean 250 compares.
    eth_prog, raw_prog = programs
    eth_ifs = list(range(10, 260))
    prog = per_interface([(eth_ifs, eth_prog), ([5], raw_prog)])
    prelude = len(prog) - len(eth_prog) - len(raw_prog)
    steps: list[int] = []
    for ifindex in [*eth_ifs, 1, 2, 300, 0xFFFF]:  # pods, then lo, eth0, the bridge, ...
        run(prog, ETH_ACK, ifindex, steps)  # an ACK: the program rejects it early
    pod_steps, other_steps = steps[:250], steps[250:]
    eth_ack_steps: list[int] = []
    run(eth_prog, ETH_ACK, 0, eth_ack_steps)
    assert max(pod_steps) - eth_ack_steps[0] <= 20  # the lookup: 2 per halving + a leaf of 8 + `ja`
    assert max(other_steps) <= 24
    assert prelude < 2 * 250


def test_duplicates_are_compared_once_and_too_many_interfaces_is_an_error(programs: Programs) -> None:
    eth_prog, _ = programs
    assert per_interface([([4, 4, 4], eth_prog)]) == per_interface([([4], eth_prog)])
    with pytest.raises(ValueError, match="exceeds 4096"):
        per_interface([(range(2, BPF_MAXINSNS), eth_prog)])
