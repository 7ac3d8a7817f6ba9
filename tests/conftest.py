"""Shared pytest fixtures: the kaygraph test fake and a real redis-server."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.redis_server import RedisServer

# KayGraph cannot be installed from the package registries that CI reaches, so when it
# is missing the tests import a fake with the same runtime core instead. This runs at
# conftest import, before any test module imports kaygraph or kaygraph_otel.
if importlib.util.find_spec("kaygraph") is None:
    sys.path.insert(0, str(Path(__file__).parent / "fake_kaygraph"))

from tests.otel_fixtures import span_exporter, tracer_provider  # noqa: E402,F401


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port for the whole session.

    Fault tests may call ``stop()`` and ``start()``, and the port stays the same.
    """
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of an empty Redis database, restarting the server if a test stopped it."""
    redis_server.start()
    redis_server.flushdb()
    return redis_server.url
