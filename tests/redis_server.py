"""A real redis-server process on a loopback port, for tests.

The tests talk to it with the Redis protocol over a plain socket, so this module
needs no Redis client library.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from pathlib import Path

from tests.helpers import wait_for

logger = logging.getLogger(__name__)

REDIS_BINARY = "redis-server"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
SOCKET_TIMEOUT_S = 1.0


class RedisServer:
    """A redis-server process bound to 127.0.0.1 with persistence turned off.

    ``stop()`` and ``start()`` may be called repeatedly, and the server always comes
    back on the same port, so fault tests can take Redis away and bring it back.
    """

    def __init__(self, port: int, workdir: Path, binary: str = REDIS_BINARY) -> None:
        self.port = port
        self.workdir = workdir
        self.binary = binary
        self.log_path = workdir / "redis-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the process and wait until it replies to PING.

        Raises:
            RuntimeError: the binary is missing, the process exited, or it did not
                reply to PING within ``START_TIMEOUT_S`` seconds.
        """
        if self.is_running():
            return
        executable = shutil.which(self.binary)
        if executable is None:
            raise RuntimeError(
                f"{self.binary} not found on PATH. Run `make install` to install it "
                "(it uses apt-get and needs root), then rerun the tests."
            )

        command = [
            executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        logger.info("started %s on port %s (pid %s)", self.binary, self.port, self._process.pid)

        if not wait_for(lambda: self.ping() or not self.is_running(), timeout=START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(
                f"{self.binary} on port {self.port} did not reply to PING within "
                f"{START_TIMEOUT_S} s. See {self.log_path}."
            )
        if not self.is_running():
            log_tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{self.binary} on port {self.port} exited with code "
                f"{self._process.returncode}. Log {self.log_path} ends with:\n{log_tail}"
            )

    def stop(self) -> None:
        """Terminate the process and wait for it to exit, killing it if it hangs."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s pid %s ignored SIGTERM, killing it", self.binary, process.pid)
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        logger.info("stopped %s on port %s", self.binary, self.port)
        self._process = None

    def command(self, *args: str) -> bytes:
        """Send one command and return the first line of the reply, without CRLF.

        Raises:
            OSError: the connection failed or timed out.
        """
        request = f"*{len(args)}\r\n".encode()
        for arg in args:
            encoded = arg.encode()
            request += b"$%d\r\n%s\r\n" % (len(encoded), encoded)
        with socket.create_connection(("127.0.0.1", self.port), timeout=SOCKET_TIMEOUT_S) as sock:
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def ping(self) -> bool:
        """Return whether the server replies +PONG. A failed connection returns False."""
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def flushdb(self) -> None:
        reply = self.command("FLUSHDB")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHDB on {self.url} failed with reply {reply!r}")
