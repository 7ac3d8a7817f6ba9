"""Checks the redis_server fixture against the real redis-server it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for
from tests.redis_server import RedisServer


def test_server_replies_to_ping(redis_server: RedisServer) -> None:
    assert redis_server.ping()
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_stop_and_restart_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    assert redis_server.command("SET", "before-restart", "1") == b"+OK"

    redis_server.stop()
    try:
        assert not redis_server.is_running()
        assert not redis_server.ping()
    finally:
        redis_server.start()

    assert redis_server.port == port
    assert redis_server.ping()
    # Persistence is off, so a restart starts with an empty database.
    assert redis_server.command("DBSIZE") == b":0"


@pytest.mark.parametrize("run", [1, 2])
def test_redis_url_gives_empty_db(redis_server: RedisServer, redis_url: str, run: int) -> None:
    # The second run finds the first run's key unless redis_url flushed the database.
    assert redis_server.command("DBSIZE") == b":0"
    assert redis_server.command("SET", f"left-by-run-{run}", "1") == b"+OK"
    assert redis_url == redis_server.url


def test_missing_binary_names_make_install(tmp_path: Path) -> None:
    server = RedisServer(port=free_port(), workdir=tmp_path, binary="redis-server-missing")

    with pytest.raises(RuntimeError, match="redis-server-missing not found.*make install"):
        server.start()


def test_wait_for_returns_false_on_timeout() -> None:
    calls: list[int] = []

    result = wait_for(lambda: calls.append(1), timeout=0.2, interval=0.05)

    assert result is False
    assert len(calls) >= 2


def test_wait_for_returns_true_when_ready() -> None:
    calls: list[int] = []

    def third_call_succeeds() -> bool:
        calls.append(1)
        return len(calls) == 3

    assert wait_for(third_call_succeeds, timeout=5, interval=0.01) is True
    assert len(calls) == 3
