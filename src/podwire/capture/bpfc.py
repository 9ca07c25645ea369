"""The filter compiler's child process: `python -m podwire.capture.bpfc LINKTYPE` reads a pcap-filter
expression on stdin and prints libpcap's program, one `code jt jf k` line per instruction.

It runs once per expression and exits, so scapy (which wraps libpcap's pcap_compile) never stays
resident in the agent.  A failure is one line on stderr and exit 1.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    try:
        linktype = int(argv[1])
        text = sys.stdin.read()
        from scapy.arch.common import compile_filter

        prog = compile_filter(text, linktype=linktype)
        lines = []
        for i in range(prog.bf_len):
            ins = prog.bf_insns[i]
            lines.append(f"{int(ins.code)} {int(ins.jt)} {int(ins.jf)} {int(ins.k)}\n")
    except Exception as exc:  # one line for the parent, whatever libpcap or scapy raised
        print(
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write("".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
