"""Run the dashboard app with uvicorn, in the foreground or in a background thread.

Both ways bind the listening socket before uvicorn starts, so a port that is
already taken raises ``PortInUseError`` in the caller instead of a log line in
uvicorn's thread. Both also reject a host that is not a loopback address unless
the app requires a token.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from kaygraph_otel_dashboard.app import ConfigurationError, close_event_streams, dashboard_token

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
STARTUP_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
GRACEFUL_SHUTDOWN_SECONDS = 5


class PortInUseError(OSError):
    """The requested host and port are already taken by another socket."""


class TokenRequiredError(ConfigurationError):
    """The host is not a loopback address and the app requires no token."""


def is_loopback_host(host: str) -> bool:
    """Return whether ``host`` is ``localhost`` or a loopback IP address.

    Other host names count as not loopback, so that deciding this never needs a
    DNS lookup.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(app: ASGIApp, host: str) -> None:
    """Raise ``TokenRequiredError`` when ``host`` is not loopback and ``app`` requires no token."""
    if is_loopback_host(host) or dashboard_token(app) is not None:
        return
    raise TokenRequiredError(
        f"cannot serve the dashboard on {host!r} without a token because it is not a "
        "loopback address; set --token or KAYGRAPH_OTEL_DASHBOARD_TOKEN, or use "
        f"--host {DEFAULT_HOST}"
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Create a TCP socket bound to ``host`` and ``port`` and listening.

    Port 0 picks a free port; read it from ``getsockname()``.

    Raises:
        PortInUseError: another socket already listens on that address.
        OSError: the host cannot be resolved or the address cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"port {port!r} is out of range; use a port from 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise OSError(
            error.errno, f"cannot resolve dashboard host {host!r}: {error.strerror}"
        ) from None

    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":
            # Lets a restarted dashboard reuse a port whose old connections are in
            # TIME_WAIT; a port with a live listener still fails with EADDRINUSE.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUseError(
                errno.EADDRINUSE,
                f"port {port} on {host} is already in use; stop the program that uses it "
                f"or choose another port with --port (for example --port {port + 1})",
            ) from None
        raise OSError(
            error.errno, f"cannot listen on {host} port {port}: {error.strerror}"
        ) from None
    return sock


def format_url(host: str, port: int) -> str:
    """Return the http URL of the dashboard's page at ``host`` and ``port``."""
    bare = host.strip("[]")
    url_host = f"[{bare}]" if ":" in bare else bare
    return f"http://{url_host}:{port}/"


class _DashboardServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # An event stream only ends when its client leaves, so uvicorn would wait for
        # every open browser tab. Stop accepting first, so that a client that reconnects
        # cannot open a new stream, then end the open streams.
        for listener in getattr(self, "servers", []):
            listener.close()
        closed = close_event_streams(self.config.app)
        if closed:
            logger.info("Closed %d open event stream(s) for shutdown", closed)
        await super().shutdown(sockets)


def _make_server(app: ASGIApp, host: str, port: int, log_level: str) -> _DashboardServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_config=None,
        log_level=log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return _DashboardServer(config)


def serve(
    app: ASGIApp,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` in the calling thread until SIGINT or SIGTERM.

    Args:
        app: the ASGI app, normally from ``create_app``.
        host: the address to listen on.
        port: the TCP port; 0 picks a free one.
        log_level: uvicorn's log level.
        on_ready: called with the page URL once the socket listens, before serving.

    Raises:
        TokenRequiredError: ``host`` is not loopback and ``app`` requires no token.
        PortInUseError: the port is taken.
        OSError: the address cannot be bound.
    """
    check_exposure(app, host)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    server = _make_server(app, host, bound_port, log_level)
    if on_ready is not None:
        on_ready(format_url(host, bound_port))
    # uvicorn handles SIGINT and SIGTERM here because this runs in the main thread.
    server.run(sockets=[sock])


class RunningServer:
    """A dashboard server running in a daemon thread, returned by ``start_in_thread``."""

    def __init__(self, server: _DashboardServer, thread: threading.Thread, host: str, port: int):
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port
        self.url = format_url(host, port).rstrip("/")

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Shut the server down and wait for its thread to end.

        Raises:
            TimeoutError: the thread did not end within ``timeout`` seconds, even
                after uvicorn's ``force_exit`` flag was set.
        """
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("Dashboard server at %s is slow to stop; forcing exit", self.url)
            self._server.force_exit = True
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"dashboard server at {self.url} did not stop within {timeout} s")

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(
    app: ASGIApp,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    log_level: str = "warning",
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
) -> RunningServer:
    """Start serving ``app`` in a daemon thread and return once it accepts connections.

    uvicorn installs signal handlers only in the main thread, so the caller keeps
    its own; stop the server with ``RunningServer.stop()``.

    Raises:
        TokenRequiredError: ``host`` is not loopback and ``app`` requires no token.
        PortInUseError: the port is taken.
        OSError: the address cannot be bound.
        RuntimeError: the app failed to start (its lifespan startup raised) or did
            not start within ``startup_timeout`` seconds.
    """
    check_exposure(app, host)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    server = _make_server(app, host, bound_port, log_level)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as error:  # SystemExit when the lifespan startup fails
            failure.append(error)
            logger.error("Dashboard server on %s:%s stopped with %r", host, bound_port, error)
        finally:
            sock.close()

    thread = threading.Thread(
        target=run, name=f"kaygraph-otel dashboard :{bound_port}", daemon=True
    )
    thread.start()

    deadline = time.monotonic() + startup_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_SECONDS)
        sock.close()
        reason = f"it stopped with {failure[0]!r}" if failure else "it timed out"
        raise RuntimeError(
            f"dashboard server on {host}:{bound_port} did not start: {reason}; "
            "see the log for the cause"
        )
    return RunningServer(server, thread, host, bound_port)
