"""Tests of the dashboard against real parts: uvicorn on loopback, httpx, redis-server, Chromium.

Every server runs on a free loopback port in a thread (``start_in_thread``) or in
a child process (the CLI). SSE streams are read with httpx and a read timeout,
so a missing message fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html.parser
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
import redis

import kaygraph_otel
from kaygraph_otel_dashboard import cli
from kaygraph_otel_dashboard.app import (
    CONTENT_SECURITY_POLICY,
    MAX_STATE_LIMIT,
    STATIC_DIR,
    ConfigurationError,
    create_app,
)
from kaygraph_otel_dashboard.relay import MAX_MESSAGE_BYTES, RedisRelay, decode_event
from kaygraph_otel_dashboard.server import (
    PortInUseError,
    RunningServer,
    TokenRequiredError,
    check_exposure,
    is_loopback_host,
    start_in_thread,
)
from kaygraph_otel_exporters.bus import EventBus
from tests.helpers import free_port, wait_for
from tests.redis_server import RedisServer

READ_TIMEOUT_S = 10.0
TOKEN = "test-token-0123456789abcdef"
SCHEMA_PATH = Path(kaygraph_otel.__file__).with_name("event.schema.json")
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
EVENT_TYPES = {
    "workflow_started": "lifecycle",
    "workflow_completed": "lifecycle",
    "workflow_failed": "lifecycle",
    "node_started": "lifecycle",
    "node_completed": "lifecycle",
    "node_failed": "error",
    "retry_attempted": "error",
    "transition": "data",
    "execution_time": "metric",
}
HOSTILE_ID = "<img src=x onerror=alert(1)>"


def make_event(
    event_name: str,
    node_id: str = "load",
    *,
    run: str = "run-1",
    node_type: str = "LoadNode",
    **data: Any,
) -> dict[str, Any]:
    """Return a schema event, checked against the package's JSON Schema."""
    data.setdefault("state", "running")
    event = {
        "event_id": str(uuid.uuid4()),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
        "node_id": node_id,
        "node_type": node_type,
        "event_type": EVENT_TYPES[event_name],
        "event_name": event_name,
        "data": data,
        "correlation_id": run,
        "workflow_id": "0123456789abcdef",
    }
    VALIDATOR.validate(event)
    return event


def compact(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def sse_id(event: dict[str, Any]) -> str:
    """Return the SSE id the dashboard gives ``event``: its event id and run id."""
    return f"{event['event_id']}/{quote(event['correlation_id'], safe='')}"


class SSEReader:
    """Parse Server-Sent Events from an httpx streaming response, one message at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()
        self.comments: list[str] = []
        self.retry: str | None = None

    def next_message(self) -> dict[str, str]:
        """Return the next message with a field other than ``retry``.

        Comment lines are collected aside, and a message with only ``retry`` sets
        ``self.retry``. httpx raises ReadTimeout when no line arrives within the
        client's read timeout.
        """
        fields: dict[str, str] = {}
        for line in self._lines:
            if line == "":
                if set(fields) == {"retry"}:
                    self.retry = fields.pop("retry")
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = fields[name] + "\n" + value if name in fields else value
        raise EOFError(f"stream ended; partial message {fields!r}")

    def next_comment(self) -> str:
        """Return the next comment line, reading past messages."""
        for line in self._lines:
            if line.startswith(":"):
                return line[1:].strip()
        raise EOFError("stream ended before a comment line")


@pytest.fixture
def bus() -> EventBus:
    return EventBus(max_buffer=100)


@contextlib.contextmanager
def running(app: Any) -> Iterator[RunningServer]:
    server = start_in_thread(app)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(bus: EventBus) -> Iterator[RunningServer]:
    with running(create_app(bus=bus)) as started:
        yield started


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
        yield http


def subscribers(http: httpx.Client) -> int:
    return int(http.get("/healthz").json()["subscribers"])


# ---- event stream -----------------------------------------------------------------


def test_events_stream_published_events(bus: EventBus, client: httpx.Client) -> None:
    first = make_event("node_started")
    second = make_event("node_completed", state="completed")
    with client.stream("GET", "/api/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SSEReader(response)
        bus.publish(first)
        bus.publish(second)
        messages = [reader.next_message(), reader.next_message()]

    assert messages[0]["id"] == sse_id(first)
    assert json.loads(messages[0]["data"]) == first
    assert messages[0]["data"] == compact(first)
    assert "event" not in messages[0]
    assert messages[1]["id"] == sse_id(second)
    assert json.loads(messages[1]["data"]) == second


def test_events_new_connection_skips_old_events(bus: EventBus, client: httpx.Client) -> None:
    bus.publish(make_event("node_started", "old"))
    fresh = make_event("node_started", "fresh")
    with client.stream("GET", "/api/events") as response:
        reader = SSEReader(response)
        bus.publish(fresh)
        message = reader.next_message()
    assert message["id"] == sse_id(fresh)


def test_events_replay_after_last_event_id(bus: EventBus, client: httpx.Client) -> None:
    events = [make_event("node_started", f"node-{index}") for index in range(5)]
    bus.publish_many(events)
    marker = make_event("node_completed", "marker", state="completed")
    headers = {"Last-Event-ID": events[1]["event_id"]}
    with client.stream("GET", "/api/events", headers=headers) as response:
        reader = SSEReader(response)
        replayed = [reader.next_message() for _ in range(3)]
        bus.publish(marker)
        after = reader.next_message()

    assert [message["id"] for message in replayed] == [sse_id(event) for event in events[2:]]
    assert [json.loads(message["data"]) for message in replayed] == events[2:]
    # The next message is the live one: nothing replayed twice, nothing skipped.
    assert after["id"] == sse_id(marker)


class _RacingBus(EventBus):
    """A bus on which one event is published while a replay is being read.

    That event reaches both the new stream's subscription and the replay, as it
    does when a publisher thread races a reconnecting client.
    """

    def __init__(self, racing_event: dict[str, Any]) -> None:
        super().__init__(max_buffer=100)
        self._racing_event: dict[str, Any] | None = racing_event

    def events_since(self, event_id: str) -> list[dict[str, Any]] | None:
        racing, self._racing_event = self._racing_event, None
        if racing is not None:
            self.publish(racing)
        return super().events_since(event_id)


def test_events_replay_race_sends_event_once() -> None:
    racing = make_event("node_started", "racing")
    bus = _RacingBus(racing)
    earlier = make_event("node_started", "earlier")
    bus.publish(earlier)
    marker = make_event("node_completed", "marker", state="completed")
    with running(create_app(bus=bus)) as server:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            headers = {"Last-Event-ID": earlier["event_id"]}
            with http.stream("GET", "/api/events", headers=headers) as response:
                reader = SSEReader(response)
                first = reader.next_message()
                bus.publish(marker)
                second = reader.next_message()
    assert first["id"] == sse_id(racing)
    assert second["id"] == sse_id(marker)


def test_events_replay_from_query_parameter(bus: EventBus, client: httpx.Client) -> None:
    events = [make_event("node_started", f"node-{index}") for index in range(3)]
    bus.publish_many(events)
    params = {"last_event_id": events[0]["event_id"]}
    with client.stream("GET", "/api/events", params=params) as response:
        reader = SSEReader(response)
        ids = [reader.next_message()["id"] for _ in range(2)]
    assert ids == [sse_id(events[1]), sse_id(events[2])]


def test_events_replay_of_latest_id_is_empty(bus: EventBus, client: httpx.Client) -> None:
    latest = make_event("node_started")
    bus.publish(latest)
    live = make_event("node_completed", state="completed")
    with client.stream("GET", "/api/events", headers={"Last-Event-ID": latest["event_id"]}) as r:
        reader = SSEReader(r)
        bus.publish(live)
        message = reader.next_message()
    assert message["id"] == sse_id(live)


def test_events_unknown_last_event_id_resets(bus: EventBus, client: httpx.Client) -> None:
    bus.publish(make_event("node_started"))
    live = make_event("node_completed", state="completed")
    headers = {"Last-Event-ID": str(uuid.uuid4())}
    with client.stream("GET", "/api/events", headers=headers) as response:
        reader = SSEReader(response)
        reset = reader.next_message()
        bus.publish(live)
        after = reader.next_message()

    assert reset["event"] == "reset"
    assert "id" not in reset
    assert json.loads(reset["data"])["state_url"] == "/api/state"
    assert after["id"] == sse_id(live)


def test_events_slow_client_gets_reset() -> None:
    bus = EventBus(max_buffer=100)
    events = [make_event("node_started", f"node-{index}") for index in range(10)]
    with running(create_app(bus=bus, max_client_queue=2)) as server:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            with http.stream("GET", "/api/events") as response:
                reader = SSEReader(response)
                # One batch reaches the stream's queue at once, so 8 of 10 are dropped.
                bus.publish_many(events)
                messages = [reader.next_message() for _ in range(3)]

    assert messages[0]["event"] == "reset"
    assert json.loads(messages[0]["data"])["reason"] == "client_too_slow"
    assert messages[1]["id"] == sse_id(events[8])
    assert messages[2]["id"] == sse_id(events[9])


def test_events_sends_pings() -> None:
    with running(create_app(bus=EventBus(), ping_seconds=0.2)) as server:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            with http.stream("GET", "/api/events") as response:
                comment = SSEReader(response).next_comment()
    assert comment.startswith("ping")


def test_events_disconnect_closes_subscription(client: httpx.Client) -> None:
    assert subscribers(client) == 0
    with client.stream("GET", "/api/events") as response:
        assert response.status_code == 200
        assert subscribers(client) == 1
    assert wait_for(lambda: subscribers(client) == 0, timeout=10.0)


def test_server_stop_ends_open_streams(bus: EventBus) -> None:
    server = start_in_thread(create_app(bus=bus))
    try:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            with http.stream("GET", "/api/events") as response:
                reader = SSEReader(response)
                server.stop()
                assert not server.running
                with pytest.raises(EOFError):
                    reader.next_message()
    finally:
        server.stop()
    assert bus.subscriber_count == 0


# ---- state, health and page ---------------------------------------------------------


def test_state_returns_recent_events(bus: EventBus, client: httpx.Client) -> None:
    events = [make_event("node_started", f"node-{index}") for index in range(5)]
    bus.publish_many(events)

    default = client.get("/api/state")
    limited = client.get("/api/state", params={"limit": "3"})

    assert default.status_code == 200
    assert default.json() == {"events": events}
    assert limited.status_code == 200
    assert limited.json()["events"] == events[2:]
    assert limited.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "limit", ["0", "-1", "abc", "1.5", "", " 5", str(MAX_STATE_LIMIT + 1), "\u0663"]
)
def test_state_rejects_bad_limit(client: httpx.Client, limit: str) -> None:
    response = client.get("/api/state", params={"limit": limit})
    assert response.status_code == 400
    assert "limit" in response.json()["error"]
    assert str(MAX_STATE_LIMIT) in response.json()["error"]


def test_state_accepts_max_limit(client: httpx.Client) -> None:
    response = client.get("/api/state", params={"limit": str(MAX_STATE_LIMIT)})
    assert response.status_code == 200


def test_health_reports_embedded_mode(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "subscribers": 0,
        "mode": "embedded",
        "runs": 0,
        "otlp": {"requests": 0, "spans": 0, "events": 0, "rejected": 0},
    }


class _PageScanner(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script_text = ""
        self.style_tags = 0
        self.inline_attributes: list[str] = []
        self.ids: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "id" in attributes and attributes["id"]:
            self.ids.add(attributes["id"])
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.inline_attributes.append(f"{tag} {name}")
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True
        elif tag == "style":
            self.style_tags += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_script_text += data.strip()


def test_page_has_csp_and_no_inline_code(client: httpx.Client) -> None:
    response = client.get("/")
    scanner = _PageScanner()
    scanner.feed(response.text)

    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert scanner.scripts == [
        {"src": "/static/vendor/elk.bundled.js", "defer": None},
        {"type": "module", "src": "/static/app.js"},
    ]
    assert scanner.inline_script_text == ""
    assert scanner.style_tags == 0
    assert scanner.inline_attributes == []
    assert {"connection-status", "runs", "event-log", "graph"} <= scanner.ids


def test_static_files_served_with_nosniff(client: httpx.Client) -> None:
    script = client.get("/static/app.js")
    style = client.get("/static/style.css")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")


def test_page_script_never_parses_html() -> None:
    scripts = sorted(STATIC_DIR.glob("*.js"))
    assert len(scripts) >= 8
    for path in scripts:
        script = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script, f"{path.name} uses {sink}"
        assert "new Function" not in script, path.name
    for path in [STATIC_DIR / "index.html", STATIC_DIR / "style.css", *scripts]:
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path.name
        assert "https://" not in text, path.name


# ---- token and Host header ----------------------------------------------------------


@pytest.fixture
def token_client(bus: EventBus) -> Iterator[httpx.Client]:
    with running(create_app(bus=bus, token=TOKEN)) as server:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            yield http


@pytest.mark.parametrize("path", ["/", "/api/state", "/api/events", "/healthz"])
def test_token_required_on_every_route(token_client: httpx.Client, path: str) -> None:
    missing = token_client.get(path)
    wrong = token_client.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "token" in missing.json()["error"]
    assert wrong.status_code == 401


def test_token_accepted_as_header_or_query(token_client: httpx.Client) -> None:
    by_header = token_client.get("/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    by_query = token_client.get("/api/state", params={"token": TOKEN})
    with token_client.stream("GET", "/api/events", params={"token": TOKEN}) as stream:
        stream_status = stream.status_code
    assert by_header.status_code == 200
    assert by_query.status_code == 200
    assert stream_status == 200


def test_token_not_needed_for_static_files(token_client: httpx.Client) -> None:
    assert token_client.get("/static/app.js").status_code == 200


def test_short_token_rejected() -> None:
    with pytest.raises(ConfigurationError, match="at least 16"):
        create_app(bus=EventBus(), token="short")


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8080", "10.1.2.3"])
def test_foreign_host_header_rejected(client: httpx.Client, host: str) -> None:
    response = client.get("/api/state", headers={"Host": host})
    assert response.status_code == 400
    assert "Host header" in response.json()["error"]


@pytest.mark.parametrize("host", ["localhost:8080", "127.0.0.1", "[::1]:9000", "LOCALHOST"])
def test_loopback_host_header_accepted(client: httpx.Client, host: str) -> None:
    assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_foreign_host_header_accepted_with_token(token_client: httpx.Client) -> None:
    response = token_client.get(
        "/healthz", headers={"Host": "dashboard.example", "Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200


# ---- server helpers -----------------------------------------------------------------


def test_port_in_use_raises_naming_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as caught:
            start_in_thread(create_app(bus=EventBus()), "127.0.0.1", port)
    assert isinstance(caught.value, OSError)
    assert str(port) in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    assert "--port" in str(caught.value)


def test_non_loopback_host_needs_token() -> None:
    with pytest.raises(TokenRequiredError) as caught:
        start_in_thread(create_app(bus=EventBus()), "0.0.0.0", 0)
    assert "0.0.0.0" in str(caught.value)
    assert "--token" in str(caught.value)


def test_non_loopback_host_with_token_allowed() -> None:
    # Only the check: binding 0.0.0.0 would expose the port on the machine's network.
    check_exposure(create_app(bus=EventBus(), token=TOKEN), "0.0.0.0")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback_host(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected


def test_start_in_thread_reports_url(server: RunningServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0
    assert httpx.get(f"{server.url}/healthz", timeout=READ_TIMEOUT_S).status_code == 200


# ---- command line -------------------------------------------------------------------


def test_cli_port_in_use_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        status = cli.main(["dashboard", "--port", str(port)])
    stderr = capsys.readouterr().err
    assert status == 2
    assert f"port {port}" in stderr
    assert "--port" in stderr
    assert "Traceback" not in stderr
    assert "[Errno" not in stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dashboard", "--redis-url", "http://127.0.0.1:6379"], "invalid Redis URL"),
        (["dashboard", "--host", "0.0.0.0"], "not a loopback address"),
        (["dashboard", "--token", "short"], "at least 16"),
    ],
)
def test_cli_bad_settings_fail(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    status = cli.main(argv)
    stderr = capsys.readouterr().err
    assert status == 2
    assert expected in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KAYGRAPH_OTEL_DASHBOARD_TOKEN", "short", "at least 16"),
        ("KAYGRAPH_OTEL_DASHBOARD_TOKEN", " " * 24, "contains whitespace"),
        ("KAYGRAPH_OTEL_REDIS_URL", "bogus", "invalid Redis URL 'bogus'"),
    ],
)
def test_cli_bad_environment_named(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setenv(variable, value)
    status = cli.main(["dashboard", "--port", "0"])
    stderr = capsys.readouterr().err
    assert status == 2
    assert f"error: {variable}: " in stderr
    assert expected in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_cli_blank_token_option_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["dashboard", "--port", "0", "--token", " " * 24])
    stderr = capsys.readouterr().err
    assert status == 2
    assert "--token: the dashboard token of 24 characters contains whitespace" in stderr


def test_cli_demo_bad_redis_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAYGRAPH_OTEL_REDIS_URL", raising=False)
    status = cli.main(["demo", "--redis-url", "bogus", "--no-dashboard", "--runs", "1"])
    stderr = capsys.readouterr().err
    assert status == 2
    assert "--redis-url: invalid Redis URL 'bogus'" in stderr
    assert "redis://127.0.0.1:6379/0" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("interval", ["inf", "1e300", "nan", "-1"])
def test_cli_demo_bad_interval(capsys: pytest.CaptureFixture[str], interval: str) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["demo", "--interval", interval, "--no-dashboard", "--runs", "1"])
    stderr = capsys.readouterr().err
    assert caught.value.code == 2
    assert f"invalid duration '{interval}': expected 0 to 86400 seconds" in stderr


def test_cli_demo_report_dir_not_creatable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    report_dir = blocker / "reports"
    status = cli.main(["demo", "--report-dir", str(report_dir), "--no-dashboard", "--runs", "1"])
    stderr = capsys.readouterr().err
    assert status == 2
    assert f"cannot create the report directory '{report_dir}'" in stderr
    assert "pass --report-dir" in stderr
    assert "Traceback" not in stderr


def test_cli_demo_module_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import fail as if the module were absent.
    monkeypatch.setitem(sys.modules, cli.DEMO_MODULE, None)
    status = cli.main(["demo", "--no-dashboard", "--runs", "1"])
    stderr = capsys.readouterr().err
    assert status == 2
    assert cli.DEMO_MODULE in stderr


def test_cli_demo_options_parsed() -> None:
    args = cli.build_parser().parse_args(
        ["demo", "--port", "9000", "--runs", "0", "--no-dashboard", "--interval", "0.5",
         "--files", "7", "--redis-url", "redis://127.0.0.1:1/0"]
    )  # fmt: skip
    assert args.port == 9000
    assert args.runs == 0
    assert args.no_dashboard is True
    assert args.interval == 0.5
    assert args.files == 7
    assert args.redis_url == "redis://127.0.0.1:1/0"


def test_cli_dashboard_serves_until_sigint(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAYGRAPH_OTEL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "kaygraph_otel_dashboard.cli", "dashboard", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20.0)
        assert ready, "the dashboard printed no URL within 20 s"
        first_line = process.stdout.readline()
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=READ_TIMEOUT_S)
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=20.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10.0)
    stderr = process.stderr.read() if process.stderr else ""
    assert f"http://127.0.0.1:{port}/" in first_line
    assert health.json()["mode"] == "embedded"
    assert status == 0, stderr
    assert "Traceback" not in stderr


# ---- Redis mode ---------------------------------------------------------------------


def relay_stats(http: httpx.Client) -> dict[str, Any]:
    return dict(http.get("/healthz").json()["relay"])


@pytest.fixture
def channel() -> str:
    return f"kaygraph:test:{uuid.uuid4().hex}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_mode(redis_url: str, channel: str) -> Iterator[httpx.Client]:
    with running(create_app(redis_url=redis_url, channel=channel)) as server:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            assert wait_for(lambda: relay_stats(http)["connected"], timeout=15.0)
            yield http


def test_redis_message_reaches_sse_client(
    redis_mode: httpx.Client, redis_client: redis.Redis, channel: str
) -> None:
    event = make_event("node_started")
    with redis_mode.stream("GET", "/api/events") as response:
        reader = SSEReader(response)
        receivers = redis_client.publish(channel, compact(event))
        message = reader.next_message()
    health = redis_mode.get("/healthz").json()
    assert receivers == 1
    assert message["id"] == sse_id(event)
    assert json.loads(message["data"]) == event
    assert health["mode"] == "redis"
    assert health["relay"]["received"] == 1


def test_redis_invalid_messages_skipped(
    redis_mode: httpx.Client, redis_client: redis.Redis, channel: str
) -> None:
    event = make_event("node_completed", state="completed")
    with redis_mode.stream("GET", "/api/events") as response:
        reader = SSEReader(response)
        redis_client.publish(channel, "not json {")
        redis_client.publish(channel, "[1, 2]")
        redis_client.publish(channel, json.dumps({"event_name": "node_started"}))
        redis_client.publish(channel, "[" * 100_000 + "]" * 100_000)
        redis_client.publish(channel, compact(event))
        message = reader.next_message()
    stats = relay_stats(redis_mode)
    assert message["id"] == sse_id(event)
    assert stats["invalid"] == 4
    assert stats["reconnect_attempts"] == 0


def test_redis_relay_survives_restart(
    redis_mode: httpx.Client, redis_server: RedisServer, redis_url: str, channel: str
) -> None:
    before = make_event("node_started", run="restart")
    after = make_event("node_completed", run="restart", state="completed")
    with redis_mode.stream("GET", "/api/events") as response:
        reader = SSEReader(response)
        with redis.Redis.from_url(redis_url, socket_timeout=5.0) as publisher:
            publisher.publish(channel, compact(before))
        first = reader.next_message()

        redis_server.stop()
        assert wait_for(lambda: not relay_stats(redis_mode)["connected"], timeout=20.0)
        redis_server.start()
        assert wait_for(lambda: relay_stats(redis_mode)["connected"], timeout=30.0)

        with redis.Redis.from_url(redis_url, socket_timeout=5.0) as publisher:
            publisher.publish(channel, compact(after))
        second = reader.next_message()

    assert first["id"] == sse_id(before)
    assert second["id"] == sse_id(after)
    assert relay_stats(redis_mode)["reconnect_attempts"] >= 1


def test_redis_relay_retries_until_redis_starts(
    redis_server: RedisServer, redis_url: str, channel: str
) -> None:
    redis_server.stop()
    try:
        with running(create_app(redis_url=redis_url, channel=channel)) as server:
            with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
                assert wait_for(lambda: relay_stats(http)["reconnect_attempts"] >= 2, timeout=20)
                assert relay_stats(http)["connected"] is False
                redis_server.start()
                assert wait_for(lambda: relay_stats(http)["connected"], timeout=30.0)
    finally:
        redis_server.start()


def test_redis_bad_url_rejected() -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis URL"):
        create_app(redis_url="http://127.0.0.1:6379/0")


def test_relay_hides_password_in_errors() -> None:
    with pytest.raises(ValueError) as caught:
        RedisRelay(EventBus(), "http://user:hunter2-secret@127.0.0.1:6379/0")
    assert "hunter2-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"event_id": 5}', "event_id"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "exceeds the limit"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    ],
)
def test_decode_event_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_event(payload)


# ---- browser ------------------------------------------------------------------------


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, binary: str) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def attach_pipes() -> None:
            # dup first: a pipe end may already sit on fd 3 or 4 with close-on-exec set.
            read_end, write_end = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._profile = tempfile.mkdtemp(prefix="kaygraph-otel-chromium-")
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
            "about:blank",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            close_fds=False,
            preexec_fn=attach_pipes,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            request["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method} failed: {reply['error']}")
                    return reply.get("result", {})
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, remaining))
            if not ready:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise EOFError(f"Chromium exited while answering {method}")
            self._buffer += chunk

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, EOFError, RuntimeError):
            self.call("Browser.close", timeout=5.0)
        try:
            self._process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10.0)
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture
def chromium() -> Iterator[_Chromium]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed; install it with apt-get install chromium")
    browser = _Chromium(binary)
    try:
        yield browser
    finally:
        browser.close()


NODE_STATES_JS = (
    "JSON.stringify(Object.fromEntries([...document.querySelectorAll('#graph g.node')]"
    ".map((g) => [g.dataset.nodeId, g.dataset.state])))"
)


def browser_graph(run: str) -> list[dict[str, Any]]:
    graph = {
        "nodes": [
            {"id": "load", "type": "LoadNode", "parent": "Pipeline", "start": True},
            {"id": "summarise", "type": "SummariseBatch", "parent": "Pipeline"},
            {"id": "review", "type": "ReviewGraph", "parent": "Pipeline", "is_graph": True},
            {"id": "check", "type": "CheckNode", "parent": "review", "start": True},
            {"id": HOSTILE_ID, "type": "PublishNode", "parent": "Pipeline"},
        ],
        "edges": [
            {"source": "load", "target": "summarise", "action": "default"},
            {"source": "summarise", "target": "review", "action": "default"},
            {"source": "review", "target": HOSTILE_ID, "action": "<b>approved</b>"},
        ],
    }
    return [
        make_event("workflow_started", "Pipeline", run=run, node_type="Graph",
                   workflow_name="Pipeline", graph=graph),
        make_event("node_started", "load", run=run),
        make_event("node_completed", "load", run=run, state="completed"),
        make_event("node_started", "summarise", run=run, node_type="SummariseBatch"),
        make_event("node_completed", "summarise", run=run, node_type="SummariseBatch",
                   state="completed", item_index=0),
        make_event("node_completed", "summarise", run=run, node_type="SummariseBatch",
                   state="completed", item_index=1),
        make_event("node_started", "review", run=run, node_type="ReviewGraph"),
        make_event("node_started", "check", run=run, node_type="CheckNode"),
        make_event("retry_attempted", "check", run=run, node_type="CheckNode", state="retrying",
                   error={"type": "RuntimeError", "message": "<script>alert(2)</script>"}),
        make_event("node_started", "standalone", run=run, node_type="AuditNode"),
        make_event("node_failed", "standalone", run=run, node_type="AuditNode", state="handled",
                   error={"type": "KeyError", "message": "missing", "handled": True}),
    ]  # fmt: skip


def test_browser_shows_states_and_escapes_text(bus: EventBus, chromium: _Chromium) -> None:
    run = "browser-run"
    bus.publish_many(browser_graph(run))
    with running(create_app(bus=bus)) as server:
        chromium.open(server.url + "/")
        expected = {
            "load": "completed",
            "summarise": "running",
            "review": "running",
            "check": "retrying",
            HOSTILE_ID: "waiting",
        }
        assert wait_for(lambda: json.loads(chromium.evaluate(NODE_STATES_JS)) == expected, 15.0)
        status_js = "document.getElementById('connection-status').dataset.state"
        assert wait_for(lambda: chromium.evaluate(status_js) == "live", 15.0)

        live = make_event("node_completed", "check", run=run, node_type="CheckNode",
                          state="completed")  # fmt: skip
        bus.publish(live)
        assert wait_for(
            lambda: json.loads(chromium.evaluate(NODE_STATES_JS)).get("check") == "completed", 15.0
        )

        images = chromium.evaluate("document.querySelectorAll('img, script:not([src])').length")
        label_texts = chromium.evaluate(
            "[...document.querySelectorAll('#graph text')].map((t) => t.textContent)"
        )
        summarise_done = chromium.evaluate(
            "document.querySelector('#graph g.node[data-node-id=\"summarise\"]').dataset.itemsDone"
        )
        extra = chromium.evaluate(
            "[...document.querySelectorAll('#extra-nodes li')]"
            ".map((li) => [li.dataset.nodeId, li.dataset.state])"
        )
        log_rows = chromium.evaluate("document.querySelectorAll('#event-log tr').length")
        log_text = chromium.evaluate("document.getElementById('event-log').textContent")
        runs = chromium.evaluate(
            "[...document.querySelectorAll('#runs li')].map((li) => [li.dataset.runId,"
            " li.dataset.status])"
        )

    assert images == 0
    assert any(text.startswith("<img src=x") for text in label_texts)
    assert "<b>approved</b>" in label_texts
    assert summarise_done == "2"
    assert extra == [["standalone", "handled"]]
    assert log_rows == len(browser_graph(run)) + 1
    assert "<script>alert(2)</script>" in log_text
    assert runs == [[run, "running"]]
