"""The `fastmesh` command: parse arguments and hand each subcommand to the module that does the work."""
from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastmesh._version import __version__
from fastmesh.logs import LEVELS
from fastmesh.process.lean_asyncio import import_asyncio_without_ssl
from fastmesh.process.startup_only import forget

if TYPE_CHECKING:
    import argparse


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return dispatch(argv)
    except BrokenPipeError:
        # `fastmesh check x.toml | head` closed our stdout early: that is the reader's choice, not a crash. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again, and exit as SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def dispatch(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the subcommand; returns its exit code."""
    before = set(sys.modules)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "explain" and len(extra) == 1 and not extra[0].startswith("-") and args.config is None:
        # `explain URL -H 'a: b' CONFIG`: argparse takes positionals in one run, so CONFIG after an option is left
        # over; it is still the same CONFIG, and still not to be given with --admin.
        if args.admin is not None:
            parser.error("argument CONFIG: not allowed with argument --admin")
        args.config, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        config, log_level = args.config, args.log_level
        del parser, args
        forget(PARSING_ONLY, set(sys.modules) - before)     # (0.6 MiB, shared with every worker)
        import_asyncio_without_ssl()
        from fastmesh.process.supervisor import run
        return run(config, log_level)
    if args.command == "check":
        from fastmesh.cli.check import main as check_main
        return check_main(args.config, args.json, args.resolve, args.cert_warn_days)
    if args.command == "demo":
        return demo(args.ports, args.host, args.log_level)
    if args.command == "stat":
        from fastmesh.cli.stat import main as stat_main
        return stat_main(args.admin, args.config, args.watch, args.interval)
    if args.command == "explain":
        from fastmesh.cli.explain import main as explain_main
        return explain_main(args.url, args.method, args.header, args.listener, args.client, args.admin, args.config,
                            args.json)
    if args.command == "plugins":
        from fastmesh.cli.plugins import main as plugins_main
        return plugins_main(args.config, args.json)
    if args.command == "_worker":
        import_asyncio_without_ssl()
        from fastmesh.process.worker import main as worker_main
        return worker_main(args.config, args.worker_id, args.log_level, args.stats_fd, args.control_fd,
                           args.limits_fd, args.config_fd, args.rates_fd, args.ticket_fd)
    parser.print_help(sys.stderr)
    return 2


# What parsing the command line imported that nothing after it uses: argparse, and what it pulled in (gettext for its
# messages, shutil for the terminal's width, which loads bz2 and lzma).
PARSING_ONLY = ("argparse", "gettext", "shutil", "bz2", "lzma", "_compression")


def build_parser() -> argparse.ArgumentParser:
    import argparse
    parser = argparse.ArgumentParser(prog="fastmesh", description="A service-mesh proxy and load balancer.")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and the kind of core build, then exit")
    # The metavar lists the public commands only: `_worker` is how the supervisor starts its workers.
    sub = parser.add_subparsers(dest="command", metavar="{run,check,demo,stat,explain,plugins}")

    run = sub.add_parser("run", help="run the proxy: a supervisor and its worker processes",
                         description="Run the proxy described by CONFIG until SIGTERM or SIGINT.")
    run.add_argument("config", metavar="CONFIG", help="TOML config file")
    _log_level(run)

    check = sub.add_parser("check", help="validate a config and print it with defaults filled in",
                           description="Validate CONFIG; print the effective config and exit 0, "
                                       "or print every problem to stderr and exit 1.")
    check.add_argument("config", metavar="CONFIG", help="TOML config file")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    check.add_argument("--resolve", action="store_true",
                       help="ask each discovery source (DNS, etcd, files) once and print what it found")
    check.add_argument("--cert-warn-days", type=float, default=14.0, metavar="DAYS",
                       help="warn about TLS certificates that expire within DAYS days (default: %(default)g)")

    demo = sub.add_parser("demo", help="run only the demo backends, in the foreground",
                          description="Run demo HTTP/echo backends that name themselves, until Ctrl-C.")
    demo.add_argument("--ports", default="9001,9002,9003", help="comma-separated ports (default: %(default)s)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    _log_level(demo)

    stat = sub.add_parser("stat", help="show a running instance's listeners and clusters (rps, success, latency)",
                          description="Read a running fastmesh's admin server and print its listeners and "
                                      "clusters: requests/s, success rate, p50/p99 latency (http), "
                                      "connections/s, open connections, bytes/s (tcp), endpoints up.")
    where = stat.add_mutually_exclusive_group()
    where.add_argument("config", metavar="CONFIG", nargs="?", help="config file of the instance (its [admin] listen)")
    where.add_argument("--admin", metavar="HOST:PORT", help="the admin server's address (default: 127.0.0.1:9990)")
    stat.add_argument("--watch", "-w", action="store_true", help="refresh the table until Ctrl-C")
    stat.add_argument("--interval", "-i", type=_positive_seconds, default=1.0, metavar="SECONDS",
                      help="seconds over which rates are measured (default: %(default)s)")

    explain = sub.add_parser("explain", help="show where a request would go: listener, route, cluster, endpoint",
                             description="Ask a running instance's admin server which listener, route (and why "
                                         "each earlier route did not match), cluster and endpoint a request for URL "
                                         "would get, and its time and retry budget. With CONFIG and no instance "
                                         "answering, explain from the config alone.")
    explain.add_argument("url", metavar="URL", help="the request's URL, e.g. http://api.example.com:8080/v1/users")
    explain.add_argument("-X", "--method", default="GET", help="request method (default: %(default)s)")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a request header (repeatable)")
    explain.add_argument("--listener", metavar="NAME", help="the listener (default: the one on the URL's port)")
    explain.add_argument("--client", metavar="IP", help="the client's address, for source_ip hash keys")
    explain.add_argument("--json", action="store_true", help="print the admin server's JSON instead of a table")
    where = explain.add_mutually_exclusive_group()
    where.add_argument("config", metavar="CONFIG", nargs="?", help="config file of the instance (its [admin] listen)")
    where.add_argument("--admin", metavar="HOST:PORT", help="the admin server's address (default: 127.0.0.1:9990)")

    plugins = sub.add_parser("plugins", help="list the plugins installed, and those a config names",
                             description="List the plugins installed under the fastmesh.plugins entry points "
                                         "(name, kinds, reference, distribution and file); with CONFIG, also "
                                         "every plugin the config names and where it was imported from.")
    plugins.add_argument("config", metavar="CONFIG", nargs="?", help="a config file whose plugins to list")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of tables")

    worker = sub.add_parser("_worker")
    worker.add_argument("config", metavar="CONFIG")
    worker.add_argument("--worker-id", type=int, required=True)
    worker.add_argument("--stats-fd", type=int, default=None)   # the shared stats block the supervisor made
    worker.add_argument("--control-fd", type=int, default=None)  # the supervisor's control channel (process/link.py)
    worker.add_argument("--limits-fd", type=int, default=None)   # the instance's limit counters (dataplane/limits.py)
    worker.add_argument("--rates-fd", type=int, default=None)    # rate-limit buckets (dataplane/ratelimits.py)
    worker.add_argument("--config-fd", type=int, default=None)   # the running config as JSON (discovery filled it in)
    worker.add_argument("--ticket-fd", type=int, default=None)   # a memfd holding the TLS session-ticket secret
    _log_level(worker)
    return parser


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 3600:
        import argparse
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text}")
    return value


def _log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=LEVELS, default="info",
                        help="log lines of this level and above, to stderr (default: %(default)s)")


def version_text() -> str:
    try:
        build_info = importlib.import_module("fastmesh._core.build_info")
    except ImportError:
        core = "not compiled"
    else:
        core = "debug build" if build_info.DEBUG else "release build"
        if not getattr(build_info, "STATS", True):
            core += ", stats compiled out"
    return f"fastmesh {__version__} (core: {core})"


def demo(ports: str, host: str, log_level: str) -> int:
    import asyncio

    import uvloop

    from fastmesh.process.demo import parse_ports, serve_demo
    from fastmesh.logs import setup_logging
    try:
        endpoints = parse_ports(ports, host)
    except ValueError as exc:
        print(f"fastmesh demo: --ports: {exc}", file=sys.stderr)
        return 2
    setup_logging(log_level, "main")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve_demo(endpoints))
