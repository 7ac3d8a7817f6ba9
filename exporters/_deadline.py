"""An overall deadline for one HTTP attempt, on top of httpx's per-operation timeouts.

httpx times each connect, read and write separately, so an endpoint that
sends one byte just before every read timeout can hold a request forever.
``DeadlineBackend`` wraps httpcore's network backend and gives each socket
operation at most the time left until the deadline that ``attempt_deadline``
sets for the calling thread. Past it, the operation raises httpcore's timeout
error, which httpx reports as ``httpx.ConnectTimeout``, ``ReadTimeout`` or
``WriteTimeout``.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import typing
from collections.abc import Iterator

import httpcore
import httpx

_state = threading.local()


@contextlib.contextmanager
def attempt_deadline(seconds: float) -> Iterator[None]:
    """Limit the network operations of this thread to ``seconds`` in total, inside the block."""
    _state.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _state.deadline = None


def deadline_passed() -> bool:
    """Return whether this thread's attempt deadline, if any, has passed."""
    deadline = getattr(_state, "deadline", None)
    return deadline is not None and time.monotonic() >= deadline


def _capped(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = getattr(_state, "deadline", None)
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise error("timed out: the attempt used up its overall time limit")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(
            ssl_context, server_hostname, _capped(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """A network backend that caps every socket operation at the thread's attempt deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _capped(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(
            path, _capped(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """Return an httpx transport whose connections obey ``attempt_deadline``.

    Without httpcore's pool in the place this function expects, the transport
    is returned unchanged, and only the checks between response chunks that
    the caller makes with ``deadline_passed`` still apply.
    """
    transport = httpx.HTTPTransport(limits=limits)
    # NOTE: httpx 0.28 and 0.29 take no network backend, so the one of httpcore's pool,
    # a private attribute, is wrapped in place.
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = DeadlineBackend(backend)  # type: ignore[union-attr]
    return transport
