"""configure(): exporters chosen from arguments and environment, with real Redis and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from kaygraph_otel_exporters import LiveSpanProcessor, configure
from kaygraph_otel_exporters._otlp import DEFAULT_OTLP_TIMEOUT_SECONDS
from kaygraph_otel_exporters.bus import EventBus
from tests.exporter_support import ChannelReader, run_node, schema_errors
from tests.helpers import free_port
from tests.test_webhook_exporter import SilentReceiver

REPO_ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 60.0
SETUP_LOGGER = "kaygraph_otel_exporters.setup"
CONFIG_ENV_VARS = (
    "KAYGRAPH_OTEL_REDIS_URL",
    "KAYGRAPH_OTEL_REDIS_CHANNEL",
    "KAYGRAPH_OTEL_FLUSH_INTERVAL_MS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONFIG_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def channel() -> str:
    return f"kaygraph:test:{uuid.uuid4().hex}"


class OtlpRequest:
    def __init__(self, path: str, content_type: str, body: bytes) -> None:
        self.path = path
        self.content_type = content_type
        self.body = body


class OtlpReceiver:
    """An HTTP server on loopback that accepts OTLP/HTTP posts and keeps them."""

    def __init__(self) -> None:
        self.requests: list[OtlpRequest] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(
                    OtlpRequest(self.path, self.headers.get("Content-Type", ""), body)
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def live_processors(provider: TracerProvider) -> list[LiveSpanProcessor]:
    # The SDK offers no public way to list a provider's processors.
    processors = provider._active_span_processor._span_processors  # noqa: SLF001
    return [p for p in processors if isinstance(p, LiveSpanProcessor)]


def run_python(
    code: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, which has no global tracer provider yet."""
    env = {key: value for key, value in os.environ.items() if key not in CONFIG_ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )


class TestRedis:
    def test_events_reach_redis(self, redis_url: str, channel: str) -> None:
        reader = ChannelReader(redis_url, channel)
        provider = configure(redis_url=redis_url, channel=channel, set_global=False)
        tracer = provider.get_tracer("kaygraph-otel-tests")

        run_node(tracer, "configured")
        provider.shutdown()
        events = reader.read_all(quiet_period=1.0)
        reader.close()

        names = [event["event_name"] for event in events]
        assert names.count("node_started") == 1
        assert names.count("node_completed") == 1
        assert names.index("node_started") < names.index("node_completed")
        for event in events:
            assert schema_errors(event) == [], event

    def test_environment_fills_defaults(
        self, redis_url: str, channel: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAYGRAPH_OTEL_REDIS_URL", redis_url)
        monkeypatch.setenv("KAYGRAPH_OTEL_REDIS_CHANNEL", channel)
        monkeypatch.setenv("KAYGRAPH_OTEL_FLUSH_INTERVAL_MS", "75")
        reader = ChannelReader(redis_url, channel)

        provider = configure(set_global=False)
        run_node(provider.get_tracer("kaygraph-otel-tests"), "from-env")
        [processor] = live_processors(provider)
        provider.shutdown()
        events = reader.read_all(quiet_period=1.0)
        reader.close()

        assert processor.schedule_delay_millis == 75
        assert {event["node_id"] for event in events} == {"from-env"}
        assert "node_completed" in [event["event_name"] for event in events]

    def test_arguments_win_over_environment(
        self, redis_url: str, channel: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env_channel = f"{channel}:env"
        monkeypatch.setenv("KAYGRAPH_OTEL_REDIS_URL", "redis://127.0.0.1:1/0")
        monkeypatch.setenv("KAYGRAPH_OTEL_REDIS_CHANNEL", env_channel)
        monkeypatch.setenv("KAYGRAPH_OTEL_FLUSH_INTERVAL_MS", "5000")
        argument_reader = ChannelReader(redis_url, channel)
        env_reader = ChannelReader(redis_url, env_channel)

        provider = configure(
            redis_url=redis_url, channel=channel, schedule_delay_millis=60, set_global=False
        )
        run_node(provider.get_tracer("kaygraph-otel-tests"), "from-arguments")
        [processor] = live_processors(provider)
        provider.shutdown()
        argument_events = argument_reader.read_all(quiet_period=1.0)
        env_events = env_reader.read_all(quiet_period=0.3)
        argument_reader.close()
        env_reader.close()

        assert processor.schedule_delay_millis == 60
        assert {event["node_id"] for event in argument_events} == {"from-arguments"}
        assert env_events == []

    @pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
    def test_invalid_flush_interval_rejected(
        self, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAYGRAPH_OTEL_FLUSH_INTERVAL_MS", value)

        with pytest.raises(ValueError, match=f"invalid KAYGRAPH_OTEL_FLUSH_INTERVAL_MS '{value}'"):
            configure(set_global=False)

    @pytest.mark.parametrize("value", ["60001", "99999999999999999999"])
    def test_flush_interval_above_range_rejected(
        self, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAYGRAPH_OTEL_FLUSH_INTERVAL_MS", value)

        with pytest.raises(ValueError) as caught:
            configure(use_bus=True, set_global=False)
        assert "KAYGRAPH_OTEL_FLUSH_INTERVAL_MS" in str(caught.value)
        assert "from 1 to 60000" in str(caught.value)
        assert value in str(caught.value)

    @pytest.mark.parametrize("value", [0, 60_001, 10**11, 10**20, True, 1.5])
    def test_schedule_delay_out_of_range_rejected(self, value: object) -> None:
        with pytest.raises(ValueError) as caught:
            configure(use_bus=True, schedule_delay_millis=value, set_global=False)  # type: ignore[arg-type]
        assert "schedule_delay_millis" in str(caught.value)
        assert "from 1 to 60000" in str(caught.value)
        assert repr(value) in str(caught.value)


class TestArgumentTypes:
    @pytest.mark.parametrize("name", ["use_bus", "console", "set_global"])
    def test_flags_must_be_bool(self, name: str) -> None:
        with pytest.raises(TypeError) as caught:
            configure(**{name: "no"})  # type: ignore[arg-type]
        assert f"{name} must be True or False" in str(caught.value)
        assert "'no'" in str(caught.value)

    def test_endpoint_must_be_string(self) -> None:
        with pytest.raises(TypeError, match="otlp_endpoint must be a URL string.* int 4318"):
            configure(otlp_endpoint=4318, set_global=False)  # type: ignore[arg-type]

    def test_unparsable_endpoint_hides_password(self) -> None:
        with pytest.raises(ValueError) as caught:
            configure(otlp_endpoint="http://u:pw-secret@[::1", set_global=False)
        message = str(caught.value)
        assert "invalid otlp_endpoint 'http://***@[::1'" in message
        assert "Invalid IPv6 URL" in message
        assert "pw-secret" not in message

    @pytest.mark.parametrize(
        "name", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    )
    def test_environment_endpoint_validated(
        self, name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(name, "not a url")
        with pytest.raises(ValueError, match=f"invalid {name} 'not a url'"):
            configure(set_global=False)


class TestBus:
    def test_events_reach_given_bus(self) -> None:
        bus = EventBus()

        async def scenario() -> list[str]:
            subscription = bus.subscribe()
            provider = configure(bus=bus, schedule_delay_millis=50, set_global=False)
            run_node(provider.get_tracer("kaygraph-otel-tests"), "on-bus")
            await asyncio.to_thread(provider.shutdown)
            names = []
            while (event := subscription.get_nowait()) is not None:
                assert schema_errors(event) == [], event
                names.append(event["event_name"])
            subscription.close()
            return names

        names = asyncio.run(scenario())

        assert names.count("node_started") == 1
        assert names.count("node_completed") == 1

    def test_use_bus_takes_default_bus(self) -> None:
        from kaygraph_otel_exporters.bus import get_default_bus

        before = get_default_bus().published
        provider = configure(use_bus=True, set_global=False)
        run_node(provider.get_tracer("kaygraph-otel-tests"), "default-bus")
        provider.shutdown()

        assert get_default_bus().published - before >= 2


class TestOtlp:
    def test_endpoint_argument_gets_traces_path(self, otlp_receiver: OtlpReceiver) -> None:
        provider = configure(otlp_endpoint=otlp_receiver.url, set_global=False)
        run_node(provider.get_tracer("kaygraph-otel-tests"), "to-collector")

        assert provider.force_flush(10_000)
        provider.shutdown()

        assert [request.path for request in otlp_receiver.requests] == ["/v1/traces"]
        assert otlp_receiver.requests[0].content_type == "application/x-protobuf"
        assert b"to-collector" in otlp_receiver.requests[0].body

    def test_environment_endpoint_enables_otlp(
        self, otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
        provider = configure(set_global=False)
        run_node(provider.get_tracer("kaygraph-otel-tests"), "env-collector")

        assert provider.force_flush(10_000)
        provider.shutdown()

        assert [request.path for request in otlp_receiver.requests] == ["/v1/traces"]
        assert b"env-collector" in otlp_receiver.requests[0].body

    @staticmethod
    def otlp_timeout(provider: TracerProvider) -> float:
        # The SDK offers no public way to read a processor's exporter or its timeout.
        processors = provider._active_span_processor._span_processors  # noqa: SLF001
        exporter = processors[0]._batch_processor._exporter  # noqa: SLF001
        return float(exporter._client._timeout)  # noqa: SLF001

    def test_exporter_has_explicit_timeout(self) -> None:
        provider = configure(otlp_endpoint=f"http://127.0.0.1:{free_port()}", set_global=False)
        timeout = self.otlp_timeout(provider)
        provider.shutdown()
        assert timeout == DEFAULT_OTLP_TIMEOUT_SECONDS

    @pytest.mark.parametrize(
        "name", ["OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"]
    )
    def test_timeout_environment_wins(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(name, "2.5")
        provider = configure(otlp_endpoint=f"http://127.0.0.1:{free_port()}", set_global=False)
        timeout = self.otlp_timeout(provider)
        provider.shutdown()
        assert timeout == 2.5

    @pytest.mark.parametrize("mode", ["refused", "hang"])
    def test_shutdown_returns_with_failing_endpoint(self, mode: str) -> None:
        with contextlib.ExitStack() as stack:
            if mode == "hang":
                url = stack.enter_context(SilentReceiver("hang")).url
            else:
                # Nothing listens on this port: it was free when checked and nothing binds it.
                url = f"http://127.0.0.1:{free_port()}"
            provider = configure(otlp_endpoint=url, set_global=False)
            for index in range(5):
                run_node(provider.get_tracer("kaygraph-otel-tests"), f"lost-{index}")
            stopper = threading.Thread(target=provider.shutdown, daemon=True)
            stopper.start()
            # A hang guard only: the bound itself is the exporter's timeout, checked above.
            stopper.join(HANG_GUARD_S)
            assert not stopper.is_alive()

    def test_invalid_endpoint_rejected(self) -> None:
        with pytest.raises(ValueError, match="invalid otlp_endpoint 'ftp://127.0.0.1:4318'"):
            configure(otlp_endpoint="ftp://127.0.0.1:4318", set_global=False)

    def test_missing_package_names_extra(self) -> None:
        # Setting a module to None in sys.modules makes importing it fail, so the child
        # process behaves as if the OTLP exporter package were not installed.
        result = run_python(
            """
            import sys
            sys.modules["opentelemetry.exporter.otlp.proto.http.trace_exporter"] = None
            from kaygraph_otel_exporters import configure
            try:
                configure(otlp_endpoint="http://127.0.0.1:4318", set_global=False)
            except ImportError as exc:
                print("ImportError:", exc)
            """
        )

        assert result.returncode == 0, result.stderr
        assert "ImportError:" in result.stdout
        assert "kaygraph-otel[dashboard]" in result.stdout


class TestGlobalProvider:
    def test_sets_global_once_then_warns(self) -> None:
        result = run_python(
            """
            import logging
            from opentelemetry import trace
            from kaygraph_otel_exporters import configure
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
            first = configure(console=False)
            print("first is global:", trace.get_tracer_provider() is first)
            second = configure()
            print("first still global:", trace.get_tracer_provider() is first)
            print("second returned:", second is not first)
            """
        )

        assert result.returncode == 0, result.stderr
        assert "first is global: True" in result.stdout
        assert "first still global: True" in result.stdout
        assert "second returned: True" in result.stdout
        assert "already set" in result.stderr
        assert "Overriding of current TracerProvider" not in result.stderr


class TestResource:
    def test_service_name_argument(self) -> None:
        provider = configure(service_name="billing-flow", set_global=False)

        assert provider.resource.attributes["service.name"] == "billing-flow"

    def test_env_service_name_beats_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")

        provider = configure(set_global=False)

        assert provider.resource.attributes["service.name"] == "from-env"

    def test_default_service_name(self) -> None:
        provider = configure(set_global=False)

        assert provider.resource.attributes["service.name"] == "kaygraph-workflow"

    def test_no_exporter_warns(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger=SETUP_LOGGER)

        configure(set_global=False)

        assert "added no exporter" in caplog.text
