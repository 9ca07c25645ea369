"""The README's figures in one command: whole processes and whole commands, each beside its comparison.

    benchmarks/run            # the full table (root; ~10-15 min on an idle 2-core machine)
    benchmarks/run --quick    # CI: small counts; checks exactness and bounds, not times (~1-2 min)
    benchmarks/run --only replay,memory   # some scenarios (agent, replay, memory, bulk); memory's
                                          # RSS rows come from the agent runs, so they need `agent`
    python -m benchmarks      # the same as benchmarks/run

Scenarios (repeated --reps times, alternating, so a busy neighbour hits both sides alike):
  * agent: `podwire run` as its own process on a mini-cluster node (netns pods on a bridge), a
    100-pod inventory, N churned connections from a client pod; CPU from /proc/PID/stat (all
    threads), with metrics only and with 100% spans to a local OTLP receiver (its own process);
    beside it `tcpdump -w /dev/null` on the same veth and filter (the floor).  Exact = the agent's
    /metrics count N closed connections, 2N bytes up and 5N down; kernel drops from /metrics.
  * the same churn with metrics while another process keeps one core busy (full run only);
  * replay: the whole `podwire replay --format jsonl` command against `tshark -q -z conv,tcp`, on a
    connection-heavy pcap (100,000 connections of 8 packets) and a bulk pcap (1,000 of 607 packets);
    CPU of each child (user + system).  Exact = one record per connection, as many tshark conversations;
  * memory: RSS of the idle agent with the 100-pod inventory, its peak RSS over the churn, and the
    tracker's bytes per open connection at 10,000 and 100,000 (a fresh interpreter each);
  * bulk: iperf3 between two pods with and without the agent (benchmarks/capture_iperf3.py; full
    run only, needs iperf3).
Prints a table; writes benchmarks/results/run.json with the core count, load and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.otlp_receiver, benchmarks.replay_rate

from benchmarks.churn import CLIENT, PORT, RECEIVER, SERVER  # noqa: E402  (the same programs as the in-process churn)
from benchmarks.replay_rate import make_pcap  # noqa: E402

from podwire import __version__  # noqa: E402
from podwire.capture.bpf import FilterOptions, expression  # noqa: E402
from podwire.demo.cluster import Cluster, ClusterSpec, NodeSpec, PodSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PER_CONNECTION = """
import gc, sys
from podwire.model import ACK, SYN, Segment
from podwire.tracker.tracker import Tracker, TrackerLimits

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

n = int(sys.argv[1])
t = Tracker(TrackerLimits(max_connections=n + 2000, max_half_open=n + 2000))
server = bytes([10, 0, 0, 2])
def conns(lo, hi):
    for i in range(lo, hi):
        c = bytes((10, 1, (i >> 16) & 255, (i >> 8) & 255))
        port = 1024 + i % 60000
        yield Segment(1.0, 3, c, server, port, 80, i, 0, SYN, 0, True)
        yield Segment(1.0, 3, server, c, 80, port, 7, i + 1, SYN | ACK, 0, False)
t.feed_many(list(conns(0, 1000)))  # warm: caches and code paths in the baseline
gc.collect()
base = rss()
for lo in range(1000, n + 1000, 1000):
    t.feed_many(list(conns(lo, lo + 1000)))
gc.collect()
assert t.stats.established == n + 1000, t.stats
print((rss() - base) / n)
"""

# --quick bounds: regressions guards that hold today (the targets are in the README)
SCENARIOS = ("agent", "replay", "memory", "bulk")
QUICK_BOUNDS = {
    "agent_idle_rss_mb": 160.0,
    "agent_peak_rss_mb": 200.0,
    "tracker_bytes_per_open_connection": 450.0,  # ~350 measured (639 before issue 13's session 2)
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """CPU seconds of every thread of a process: /proc/PID/stat (utime + stime, all threads, also
    those that ended) in 10 ms ticks, refined by the threads' schedstat (ns) when they agree."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
            ns += int((task / "schedstat").read_text().split()[0])
    return ns / 1e9 if abs(ns / 1e9 - ticks) < 0.05 + 0.1 * ticks else ticks


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def scrape(port: int) -> dict[str, list[tuple[str, float]]]:
    """Prometheus text -> metric name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and not line.startswith("#"):
            out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return out


def write_inventory(cluster: Cluster, path: Path, pods: int = 100) -> Path:
    """The cluster's pods plus filler pods: a 100-pod identity, as on a busy node."""
    rows = ["pods:"]
    names = ("client", "server")
    for name in names:
        pod = cluster.pod(name)
        rows.append(f"  - {{ip: {pod.ipv4}, namespace: bench, name: {name}, workload: {name}, node: node-a}}")
    for i in range(pods - len(names)):
        rows.append(
            f"  - {{ip: 10.250.{i // 250}.{i % 250 + 1}, namespace: filler, name: pod-{i}, node: node-a}}"
        )
    path.write_text("\n".join(rows) + "\n")
    return path


class Agent:
    """`podwire run` on the node, capturing the client pod's veth."""

    def __init__(self, cluster: Cluster, inventory: Path, env_extra: dict[str, str], spans: bool) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PODWIRE_", "OTEL_"))}
        env.update(env_extra)
        env["PODWIRE_SPANS"] = "true" if spans else "false"
        node, client = cluster.node("node-a"), cluster.pod("client")
        argv = [sys.executable, "-m", "podwire", "run", "--netns", node.netns, "--kube", "off"]
        argv += ["--interface-include", f"^{client.host_ifname}$", "--listen", f"127.0.0.1:{self.port}"]
        argv += ["--inventory", str(inventory), "--otlp", "on" if env_extra else "off"]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                if sum(v for _, v in scrape(self.port).get("podwire_agent_interfaces", [])) >= 1:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"podwire run did not start capturing: {err}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def churn(cluster: Cluster, inventory: Path, n: int, mode: str, busy: bool = False) -> dict[str, Any]:
    """One churn of n connections under `podwire run` (mode metrics|spans), tcpdump beside it."""
    client, server, node = cluster.pod("client"), cluster.pod("server"), cluster.node("node-a")
    receiver = None
    env: dict[str, str] = {}
    if mode == "spans":
        receiver = subprocess.Popen(
            [sys.executable, "-c", RECEIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert receiver.stdout is not None
        env = json.loads(receiver.stdout.readline())
    hog = None
    agent = Agent(cluster, inventory, env, spans=mode == "spans")
    dump = cluster.run(
        node,
        ["tcpdump", "-i", client.host_ifname, "-n", "-q", "-w", "/dev/null", expression(FilterOptions())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2.0)
        idle_rss = proc_status(agent.proc.pid, "VmRSS")
        if busy:
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        cpu0, dump0 = proc_cpu(agent.proc.pid), proc_cpu(dump.pid)
        clients = 3
        per = n // clients
        total = per * clients
        t0 = time.monotonic()
        procs = [
            cluster.run(client, [sys.executable, "-c", CLIENT.format(port=PORT), str(per), server.ipv4])
            for _ in range(clients)
        ]
        for p in procs:
            p.wait()
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 30
        metrics: dict[str, list[tuple[str, float]]] = {}
        while time.monotonic() < deadline:
            metrics = scrape(agent.port)
            closed = sum(
                v for lab, v in metrics.get("podwire_tcp_connections_total", []) if 'outcome="closed"' in lab
            )
            if closed >= total:
                break
            time.sleep(0.2)
        time.sleep(1.5)  # both readers drain and idle the same wall time
        metrics = scrape(agent.port)
        cpu, dump_cpu = proc_cpu(agent.proc.pid) - cpu0, proc_cpu(dump.pid) - dump0
        peak_rss = proc_status(agent.proc.pid, "VmHWM")
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        dump.terminate()
        dump.wait(10)
        agent.stop()
    closed = sum(
        v for lab, v in metrics.get("podwire_tcp_connections_total", []) if 'outcome="closed"' in lab
    )
    others = sum(
        v for lab, v in metrics.get("podwire_tcp_connections_total", []) if 'outcome="closed"' not in lab
    )
    by_direction: dict[str, float] = {}
    for lab, v in metrics.get("podwire_tcp_bytes_total", []):
        m = re.search(r'direction="([^"]+)"', lab)
        if m:
            by_direction[m.group(1)] = by_direction.get(m.group(1), 0.0) + v
    drops = sum(v for _, v in metrics.get("podwire_agent_kernel_drops_total", []))
    exact = closed == total and others == 0 and sorted(by_direction.values()) == [2.0 * total, 5.0 * total]
    otlp = None
    if receiver is not None:
        out, _ = receiver.communicate("", timeout=30)
        otlp = json.loads(out.splitlines()[-1])
    return {
        "mode": mode + (" + one core busy" if busy else ""),
        "connections": total,
        "closed_counted": int(closed),
        "exact": exact,
        "kernel_drops": int(drops),
        "rate_conn_per_s": round(total / elapsed),
        "agent_us_per_conn": round(cpu / total * 1e6, 1),
        "tcpdump_us_per_conn": round(dump_cpu / total * 1e6, 1),
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "otlp_trace_bytes": otlp["traces"] if otlp else None,
    }


def timed_child(argv: list[str], stdout: Any) -> float:
    """Run a command to the end; its CPU seconds (user + system, from wait4)."""
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode()[-1000:] if proc.stderr else ""
        raise RuntimeError(f"{argv[0]} {argv[1:3]} exited {proc.returncode}: {err}")
    return usage.ru_utime + usage.ru_stime


def replay(pcap: Path, connections: int, reps: int) -> dict[str, Any]:
    ours: list[float] = []
    theirs: list[float] = []
    records = conversations = -1
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        for _ in range(reps):
            with open(out, "wb") as f:
                ours.append(
                    timed_child(
                        [sys.executable, "-m", "podwire", "replay", "--format", "jsonl", str(pcap)], f
                    )
                )
            records = sum(1 for line in out.read_bytes().splitlines() if b'"outcome":"closed"' in line)
            with open(out, "wb") as f:
                theirs.append(timed_child(["tshark", "-q", "-n", "-r", str(pcap), "-z", "conv,tcp"], f))
            conversations = sum(1 for line in out.read_text().splitlines() if "<->" in line)
    a, b = min(ours), min(theirs)
    return {
        "file": pcap.name,
        "connections": connections,
        "records_closed": records,
        "tshark_conversations": conversations,
        "exact": records == connections == conversations,
        "podwire_cpu_s": round(a, 3),
        "tshark_cpu_s": round(b, 3),
        "speedup": round(b / a, 2),
    }


def per_connection(n: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PER_CONNECTION, str(n)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return round(float(out.stdout.strip()), 1)


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError:
        return "missing"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def agent_scenario(quick: bool, reps: int, churn_n: int) -> list[dict[str, Any]]:
    """`podwire run` under churn on a one-node cluster: metrics, spans (and one core busy), alternating."""
    spec = ClusterSpec(
        nodes=(
            NodeSpec("node-a", (PodSpec("client", "bench", "client"), PodSpec("server", "bench", "server"))),
        )
    )
    agent_runs: list[dict[str, Any]] = []
    with Cluster(spec) as cluster:
        inventory = write_inventory(cluster, cluster.workdir() / "inventory.yaml")
        srv = cluster.run(cluster.pod("server"), [sys.executable, "-c", SERVER.format(port=PORT)])
        try:
            time.sleep(0.5)
            modes: list[tuple[str, bool]] = [("metrics", False), ("spans", False)]
            if not quick:
                modes.append(("metrics", True))
            for _ in range(reps):
                for mode, busy in modes:
                    agent_runs.append(churn(cluster, inventory, churn_n, mode, busy))
                    print(f"  {agent_runs[-1]}", flush=True)
        finally:
            srv.kill()
            srv.wait()
    return agent_runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/run", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI: small counts, exactness and bounds, not times")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of each scenario (alternating)")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/run[_quick].json)")
    ap.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run, of {','.join(SCENARIOS)} (default: all)",
    )
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= set(SCENARIOS):
        print(f"benchmarks/run: --only takes {','.join(SCENARIOS)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("benchmarks/run needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    for tool in ("tcpdump", "tshark"):
        if shutil.which(tool) is None:
            print(f"benchmarks/run needs {tool}", file=sys.stderr)
            return 2
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    churn_n = 2_000 if quick else 20_000
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "run",
        "quick": quick,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {
            "podwire": __version__,
            "python": platform.python_version(),
            "kernel": platform.release(),
            "tcpdump": version(["tcpdump", "--version"]),
            "tshark": version(["tshark", "--version"]),
            "iperf3": version(["iperf3", "--version"]) if shutil.which("iperf3") else "missing",
        },
    }
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    # --- agent under churn, metrics and spans alternating, tcpdump beside each ----------------
    agent_runs = agent_scenario(quick, reps, churn_n) if "agent" in only else []
    result["agent"] = agent_runs
    for run in agent_runs:
        check(run["exact"], f"agent {run['mode']}: {run['closed_counted']} of {run['connections']} exact")
        check(run["kernel_drops"] == 0, f"agent {run['mode']}: {run['kernel_drops']} kernel drops")

    # --- replay: the whole command against tshark ----------------------------------------------
    cache = Path(tempfile.gettempdir()) / "podwire-bench"
    cache.mkdir(exist_ok=True)
    # (name, connections, data segments each): 7 + s + s // 2 packets per connection
    files = [("connections", 2_000 if quick else 100_000, 1), ("bulk", 20 if quick else 1_000, 400)]
    replays = []
    for name, conns, segments in files if "replay" in only else []:
        pcap = cache / f"{name}-{conns}x{segments}.pcap"
        if not pcap.exists():
            make_pcap(pcap, conns, segments)
        replays.append(replay(pcap, conns, reps))
        print(f"  {replays[-1]}", flush=True)
        check(replays[-1]["exact"], f"replay {pcap.name}: not exact: {replays[-1]}")
    result["replay"] = replays

    # --- memory -------------------------------------------------------------------------------
    sizes = (10_000,) if quick else (10_000, 100_000)
    if "memory" in only:
        result["tracker_bytes_per_open_connection"] = {str(n): per_connection(n) for n in sizes}
    metrics_runs = [r for r in agent_runs if r["mode"] == "metrics"]
    if metrics_runs:
        result["agent_idle_rss_mb"] = statistics.median(r["idle_rss_mb"] for r in metrics_runs)
        result["agent_peak_rss_mb"] = max(r["peak_rss_mb"] for r in metrics_runs)
    if quick and metrics_runs and "memory" in only:
        check(
            result["agent_idle_rss_mb"] <= QUICK_BOUNDS["agent_idle_rss_mb"], "agent idle RSS over its bound"
        )
        check(
            result["agent_peak_rss_mb"] <= QUICK_BOUNDS["agent_peak_rss_mb"], "agent peak RSS over its bound"
        )
        worst = max(result["tracker_bytes_per_open_connection"].values())
        check(
            worst <= QUICK_BOUNDS["tracker_bytes_per_open_connection"], f"{worst} bytes per open connection"
        )

    # --- bulk throughput ----------------------------------------------------------------------
    if not quick and "bulk" in only:
        path = RESULTS / "capture_iperf3.json"
        path.unlink(missing_ok=True)  # never report an earlier run's figure
        have_iperf3 = shutil.which("iperf3") is not None
        if have_iperf3:
            subprocess.run(
                [sys.executable, str(ROOT / "benchmarks" / "capture_iperf3.py"), "--runs", str(reps)],
                check=False,
            )
        if path.exists():
            result["iperf3"] = json.loads(path.read_text())
        else:
            why = "it failed" if have_iperf3 else "no iperf3 (scripts/setup.sh --test)"
            result["iperf3"] = {"missing": why}

    result["seconds"] = round(time.monotonic() - started, 1)
    result["failures"] = failures
    print_table(result)
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / ("run_quick.json" if quick else "run.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


def print_table(r: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    med: Callable[[list[float]], float] = statistics.median
    for mode in dict.fromkeys(run["mode"] for run in r["agent"]):
        runs = [run for run in r["agent"] if run["mode"] == mode]
        rows.append(
            (
                f"podwire run, {runs[0]['connections']:,} churned connections, {mode}",
                f"{med([x['agent_us_per_conn'] for x in runs]):.1f} us CPU/conn (tcpdump "
                f"{med([x['tcpdump_us_per_conn'] for x in runs]):.1f}); "
                f"exact {sum(x['exact'] for x in runs)}/{len(runs)} runs; "
                f"kernel drops {sum(x['kernel_drops'] for x in runs)}",
            )
        )
    for rep in r["replay"]:
        rows.append(
            (
                f"podwire replay --format jsonl, {rep['file']}",
                f"{rep['podwire_cpu_s']:.2f} s CPU vs tshark {rep['tshark_cpu_s']:.2f} s: {rep['speedup']}x; "
                f"exact {rep['exact']}",
            )
        )
    if "agent_idle_rss_mb" in r:
        rows.append(("RSS, idle agent with a 100-pod inventory", f"{r['agent_idle_rss_mb']:.1f} MB"))
        rows.append(("RSS, peak over the churn", f"{r['agent_peak_rss_mb']:.1f} MB"))
    for n, b in r.get("tracker_bytes_per_open_connection", {}).items():
        rows.append((f"tracker memory per open connection ({int(n):,} open)", f"{b:.0f} bytes"))
    if "iperf3" in r:
        bulk = r["iperf3"]
        figure = f"{bulk['ratio'] * 100:.1f}%" if "ratio" in bulk else f"not measured: {bulk['missing']}"
        rows.append(("iperf3 with the agent / without", figure))
    width = max(len(a) for a, _ in rows)
    print(
        f"\n{r['cpu_count']} cores, load {r['load_average_at_start'][0]:.1f} at start, "
        f"podwire {r['versions']['podwire']}"
    )
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    raise SystemExit(main())
