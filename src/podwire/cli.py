"""Argument parsing only: one function per command (run, demo, replay).

Exit status: 0 ok, 2 bad input (settings, files, not root), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from podwire import __version__, config, log

EXIT_BAD_INPUT = 2


def _fail(message: str) -> int:
    print(f"podwire: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("json", "console"), default=None, help="log format (json)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)


def _settings(args: argparse.Namespace, names: Sequence[str]) -> config.Settings:
    overrides = {name: getattr(args, name, None) for name in names}
    return config.load(overrides=overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podwire", description="Every pod TCP connection as workload-labelled OpenTelemetry data."
    )
    parser.add_argument("--version", action="version", version=f"podwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="the node agent",
        description="Capture pod TCP connections on this node and export them. Every setting is also an "
        "environment variable PODWIRE_<NAME> (e.g. PODWIRE_MAX_CONNECTIONS); "
        "OTLP uses the standard OTEL_* ones.",
    )
    run.add_argument("--listen", metavar="ADDR:PORT", help="HTTP listener (default 127.0.0.1:9477)")
    run.add_argument("--netns", help="capture inside this named network namespace (simulations)")
    run.add_argument("--inventory", metavar="FILE", help="static inventory YAML naming IPs")
    run.add_argument("--kube", choices=("auto", "on", "off"), help="read identities from Kubernetes")
    run.add_argument("--kubeconfig", metavar="FILE")
    run.add_argument("--node-name", dest="node_name")
    run.add_argument("--otlp", choices=("auto", "on", "off"), help="OTLP export (auto: when endpoint set)")
    run.add_argument("--interface-include", dest="interface_include", metavar="REGEX")
    run.add_argument("--interface-exclude", dest="interface_exclude", metavar="REGEX")
    _common(run)

    demo = sub.add_parser("demo", help="build a network-namespace mini-cluster, run traffic and the agent")
    demo.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    demo.add_argument("--listen", metavar="ADDR:PORT", help="HTTP listener (default 127.0.0.1:9477)")
    demo.add_argument("--no-tui", action="store_true", help="plain periodic lines instead of the live table")
    demo.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="also send metrics and spans over OTLP to this collector, e.g. http://127.0.0.1:4317 "
        "(gRPC; OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf for :4318); exports every 5 s "
        "unless OTEL_METRIC_EXPORT_INTERVAL is set",
    )
    _common(demo)

    replay = sub.add_parser("replay", help="print one connection record per connection in a pcap/pcapng file")
    replay.add_argument("file", metavar="FILE.pcap")
    replay.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    replay.add_argument("--inventory", metavar="FILE", help="static inventory YAML naming IPs")
    _common(replay)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from podwire import agent

    settings = _settings(
        args,
        (
            "listen",
            "netns",
            "inventory",
            "kube",
            "kubeconfig",
            "node_name",
            "otlp",
            "interface_include",
            "interface_exclude",
            "log_format",
            "log_level",
        ),
    )
    log.configure(settings.log_format, settings.log_level)
    return agent.run(settings)


def cmd_demo(args: argparse.Namespace) -> int:
    from podwire.demo import main as demo_main

    settings = _settings(args, ("listen", "log_format", "log_level"))
    # the live table owns the terminal: only warnings interrupt it, unless a level was asked for
    level = settings.log_level if args.log_level or args.no_tui else "warning"
    log.configure(settings.log_format, level)
    return demo_main.run(
        settings, duration=args.duration, tui=not args.no_tui, otlp_endpoint=args.otlp_endpoint
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from podwire import agent

    settings = _settings(args, ("inventory", "log_format", "log_level"))
    log.configure(settings.log_format, settings.log_level)
    return agent.replay(settings, args.file, args.format, sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            return cmd_demo(args)
        return cmd_replay(args)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(f"podwire: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
