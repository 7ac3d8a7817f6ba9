"""The ``kaygraph-otel`` command: serve the dashboard, or run the demo workflow with it.

Usage::

    kaygraph-otel dashboard --redis-url redis://127.0.0.1:6379/0
    kaygraph-otel demo --runs 3

Errors that the user can fix (a port in use, an invalid URL, a missing token)
print one line to stderr, naming the option or environment variable, and exit
with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kaygraph_otel_dashboard.app import (
    DEFAULT_HISTORY_RUNS,
    ConfigurationError,
    check_token,
    create_app,
)
from kaygraph_otel_dashboard.otlp import DEFAULT_MAX_BODY_BYTES
from kaygraph_otel_dashboard.relay import DEFAULT_CHANNEL, validate_redis_url
from kaygraph_otel_dashboard.server import DEFAULT_HOST, DEFAULT_PORT, serve

logger = logging.getLogger(__name__)

PROG = "kaygraph-otel"
EXIT_USAGE = 2
ENV_TOKEN = "KAYGRAPH_OTEL_DASHBOARD_TOKEN"
# The same variables configure the Redis exporter, so one setting serves both ends.
ENV_REDIS_URL = "KAYGRAPH_OTEL_REDIS_URL"
ENV_REDIS_CHANNEL = "KAYGRAPH_OTEL_REDIS_CHANNEL"
DEMO_MODULE = "kaygraph_otel_dashboard.demo"
MAX_INTERVAL_SECONDS = 86_400.0


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: expected 0 to 65535")
    return port


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {value}: expected 0 or more")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("invalid value 0: expected 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected seconds") from None
    if not 0 <= value <= MAX_INTERVAL_SECONDS:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected 0 to {MAX_INTERVAL_SECONDS:g} seconds"
        )
    return value


def _fill_from_env(
    args: argparse.Namespace, attribute: str, option: str, env_name: str, *, strip: bool = True
) -> str:
    """Take ``args.<attribute>`` from ``env_name`` when the option is absent; return its source.

    With ``strip`` False a value made of spaces is kept, so that it is rejected, not ignored.
    """
    if getattr(args, attribute) is not None:
        return option
    value = os.environ.get(env_name, "")
    setattr(args, attribute, (value.strip() if strip else value) or None)
    return env_name


def _check_sources(args: argparse.Namespace, redis_source: str, token_source: str | None) -> None:
    """Validate the Redis URL and token, naming the option or variable they came from.

    Raises:
        ConfigurationError: the Redis URL or the token is invalid.
    """
    if args.redis_url is not None:
        try:
            validate_redis_url(args.redis_url)
        except ValueError as error:
            raise ConfigurationError(f"{redis_source}: {error}") from None
    if token_source is not None and args.token is not None:
        try:
            check_token(args.token)
        except ConfigurationError as error:
            raise ConfigurationError(f"{token_source}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with the ``dashboard`` and ``demo`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Live monitoring for KayGraph and PocketFlow workflows."
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="level of log messages written to stderr (default: info)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dashboard = commands.add_parser(
        "dashboard",
        help="serve the live dashboard",
        description="Serve the live dashboard until Ctrl-C or SIGTERM.",
    )
    dashboard.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})"
    )
    dashboard.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})"
    )
    dashboard.add_argument(
        "--redis-url",
        default=None,
        help=f"read events from this Redis server's Pub/Sub channel (default: ${ENV_REDIS_URL}; "
        "without it the dashboard only shows events published in its own process)",
    )
    dashboard.add_argument(
        "--channel",
        default=_env(ENV_REDIS_CHANNEL) or DEFAULT_CHANNEL,
        help=f"Redis Pub/Sub channel (default: ${ENV_REDIS_CHANNEL} or {DEFAULT_CHANNEL})",
    )
    dashboard.add_argument(
        "--token",
        default=None,
        help=f"require this token on every request (default: ${ENV_TOKEN}); "
        "required when --host is not a loopback address",
    )
    dashboard.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest OTLP request body accepted on /v1/traces, in bytes, before and after "
        f"gzip decompression; larger ones get 413 (default: {DEFAULT_MAX_BODY_BYTES})",
    )
    dashboard.add_argument(
        "--history-runs",
        type=_count,
        default=DEFAULT_HISTORY_RUNS,
        help="with --redis-url, how many recently active runs to load from their Redis "
        f"Streams at startup; 0 loads none (default: {DEFAULT_HISTORY_RUNS})",
    )
    dashboard.set_defaults(handler=_run_dashboard)

    demo = commands.add_parser(
        "demo",
        help="run a demo workflow and watch it on the dashboard",
        description="Run an instrumented demo workflow repeatedly and serve the dashboard.",
    )
    demo.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address the dashboard listens on (default: {DEFAULT_HOST})",
    )
    demo.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"dashboard TCP port (default: {DEFAULT_PORT})",
    )
    demo.add_argument(
        "--runs",
        type=_count,
        default=0,
        help="number of workflow runs; 0 runs until Ctrl-C (default: 0)",
    )
    demo.add_argument(
        "--redis-url",
        default=None,
        help=f"also publish events to this Redis server (default: ${ENV_REDIS_URL})",
    )
    demo.add_argument(
        "--no-dashboard",
        action="store_true",
        help="run the workflow without serving the dashboard",
    )
    demo.add_argument(
        "--interval",
        type=_seconds,
        default=3.0,
        help="seconds to wait between two runs (default: 3.0)",
    )
    demo.add_argument(
        "--files",
        type=_count,
        default=0,
        help="number of standard-library files that each run parses; 0 parses all of them, "
        "and a smaller number takes the next window of files on each run (default: 0)",
    )
    demo.add_argument(
        "--report-dir",
        default=None,
        help="directory that receives each run's report (default: ./reports)",
    )
    demo.add_argument(
        "--exit",
        action="store_true",
        help="stop the dashboard and exit when --runs are done; by default the dashboard "
        "stays up until Ctrl-C",
    )
    demo.set_defaults(handler=_run_demo)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a command was running.

    It is a KeyboardInterrupt so that asyncio.run, which the demo's async workflow
    runs in, lets it out of the event loop instead of logging it as a callback error.
    """


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _run_dashboard(args: argparse.Namespace) -> int:
    redis_source = _fill_from_env(args, "redis_url", "--redis-url", ENV_REDIS_URL)
    token_source = _fill_from_env(args, "token", "--token", ENV_TOKEN, strip=False)
    _check_sources(args, redis_source, token_source)
    if args.redis_url is None:
        print(
            f"{PROG}: note: no --redis-url, so the dashboard shows only events published "
            "in this process; pass --redis-url to watch workflows that publish to Redis",
            file=sys.stderr,
        )
    app = create_app(
        redis_url=args.redis_url,
        channel=args.channel,
        token=args.token,
        max_body_bytes=args.max_body_bytes,
        history_runs=args.history_runs,
    )

    def announce(url: str) -> None:
        mode = f"Redis channel {args.channel}" if args.redis_url else "embedded mode"
        suffix = " (add ?token=<your token> to the URL)" if args.token else ""
        print(f"Dashboard ({mode}): {url}{suffix}; press Ctrl-C to stop", flush=True)

    # uvicorn shuts down on SIGTERM and then raises the signal again with the handler
    # that was installed before it started. With this handler the command returns 0
    # after the clean shutdown instead of being killed by the default handler.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        serve(app, args.host, args.port, log_level=args.log_level, on_ready=announce)
    except KeyboardInterrupt:
        pass
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module(DEMO_MODULE)
    except ModuleNotFoundError as error:
        if error.name != DEMO_MODULE:
            raise
        print(
            f"{PROG}: error: the demo is not available because module {DEMO_MODULE} is "
            "missing from this installation",
            file=sys.stderr,
        )
        return EXIT_USAGE
    redis_source = _fill_from_env(args, "redis_url", "--redis-url", ENV_REDIS_URL)
    _check_sources(args, redis_source, None)
    report_dir = Path(args.report_dir or demo.DEFAULT_REPORT_DIR)
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"cannot create the report directory {str(report_dir)!r}: "
            f"{error.strerror or error}; pass --report-dir with a directory you can write to"
        ) from None
    # SIGTERM (docker stop, systemd, kill) ends the demo like Ctrl-C, so the
    # provider flushes its queued spans and the dashboard closes its streams.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(demo.run_demo(args))
    except KeyboardInterrupt:
        return 0
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kaygraph-otel`` command and return its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args))
    except (ConfigurationError, OSError) as error:
        # OSError's str() starts with "[Errno N]", and its strerror is the message alone.
        message = str(error)
        if isinstance(error, OSError) and error.strerror:
            message = error.strerror
            if error.filename is not None:
                message = f"{message}: {error.filename!r}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
