"""Small helpers shared by the tests: free loopback ports and bounded polling."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when checked.

    Another process may take the port before the caller binds it, so a caller that
    starts a server on it should report a bind failure clearly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05
) -> bool:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value.

    Returns True as soon as the predicate is truthy, or False once ``timeout`` seconds
    have passed. The predicate is always called at least once, and once more at the
    deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
