"""Exporter throughput: schema events per second through ``export()`` of prebuilt spans.

The spans come from instrumented runs of a Flow of 100 no-op nodes and are
exported in batches of 512, the SDK batch processor's default batch size.
Cases, interleaved:

- encode only: ``encode_spans`` and ``event_to_json``, the CPU work that every
  exporter does before sending;
- Redis, raw pipeline: the same events, already JSON text, published with one
  redis-py pipeline per batch: the transport without the exporter;
- ``RedisEventExporter.export`` into a real redis-server that one ``redis-cli``
  subscriber listens to;
- when ``kaygraph_otel_exporters.webhook.WebhookSpanExporter`` exists, its
  ``export`` into a uvicorn receiver in another process, next to a raw httpx
  POST of the same events as one JSON array per batch.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import redis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from benchmarks._common import (
    Finding,
    Options,
    RedisServer,
    Result,
    Table,
    free_port,
    interleaved,
    median,
    noop_flow,
    round_ratios,
    timed,
    wait_until,
)
from benchmarks.per_node import capture_spans
from kaygraph_otel_exporters.encoder import encode_spans, event_to_json
from kaygraph_otel_exporters.redis import DEFAULT_CHANNEL, RedisEventExporter

NAME = "throughput"
BATCH_SPANS = 512
RECEIVER_START_TIMEOUT_SECONDS = 20.0
HTTP_TIMEOUT_SECONDS = 10.0


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A minimal ASGI webhook receiver: read the whole body, reply 204 No Content."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def prebuilt_spans(runs: int) -> list[ReadableSpan]:
    flow = noop_flow(100)
    spans: list[ReadableSpan] = []
    for _ in range(runs):
        spans.extend(capture_spans(flow, instrument=True))
    return spans


def batches(spans: Sequence[ReadableSpan]) -> list[Sequence[ReadableSpan]]:
    return [spans[start : start + BATCH_SPANS] for start in range(0, len(spans), BATCH_SPANS)]


def _exporting(exporter: SpanExporter, span_batches: list[Sequence[ReadableSpan]]) -> Callable[[], None]:
    def export_all() -> None:
        for batch in span_batches:
            if exporter.export(batch) is not SpanExportResult.SUCCESS:
                raise RuntimeError(f"{exporter!r} failed to export a batch of {len(batch)} spans")

    return export_all


def _encoding(span_batches: list[Sequence[ReadableSpan]]) -> Callable[[], None]:
    def encode_all() -> None:
        for batch in span_batches:
            for event in encode_spans(batch):
                event_to_json(event)

    return encode_all


def _raw_redis(client: redis.Redis, payloads: list[list[str]]) -> Callable[[], None]:
    def publish_all() -> None:
        for batch in payloads:
            with client.pipeline(transaction=False) as pipe:
                for payload in batch:
                    pipe.publish(DEFAULT_CHANNEL, payload)
                pipe.execute()

    return publish_all


def _raw_http(client: httpx.Client, url: str, bodies: list[bytes]) -> Callable[[], None]:
    def post_all() -> None:
        for body in bodies:
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            response.raise_for_status()

    return post_all


class _Subscriber:
    """A ``redis-cli`` process subscribed to the events channel, discarding what it receives."""

    def __init__(self, server: RedisServer) -> None:
        self._process = subprocess.Popen(
            ["redis-cli", "-p", str(server.port), "subscribe", DEFAULT_CHANNEL],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with redis.Redis(port=server.port, socket_timeout=2) as client:

            def subscribed() -> bool:
                counts = dict(client.pubsub_numsub(DEFAULT_CHANNEL))
                return int(counts.get(DEFAULT_CHANNEL.encode(), 0)) >= 1

            if not wait_until(subscribed, 10):
                self.close()
                raise RuntimeError(f"redis-cli did not subscribe to {DEFAULT_CHANNEL} within 10 s")

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)


class _Receiver:
    """uvicorn serving ``receiver_app`` in a child process on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        command = [
            sys.executable, "-m", "uvicorn", "benchmarks.throughput:receiver_app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)

        def ready() -> bool:
            try:
                return httpx.post(self.url, content=b"{}", timeout=1).status_code == 204
            except httpx.HTTPError:
                return False

        if not wait_until(ready, RECEIVER_START_TIMEOUT_SECONDS, interval=0.1):
            self.close()
            raise RuntimeError(
                f"the webhook receiver on port {self.port} did not answer within "
                f"{RECEIVER_START_TIMEOUT_SECONDS} s"
            )

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)


def webhook_exporter_class() -> type[SpanExporter] | None:
    try:
        module = importlib.import_module("kaygraph_otel_exporters.webhook")
    except ModuleNotFoundError:
        return None
    return getattr(module, "WebhookSpanExporter", None)


def make_webhook_exporter(exporter_class: type[SpanExporter], url: str) -> SpanExporter:
    """Build the webhook exporter for ``url``, passing a signing secret if it takes one."""
    parameters = inspect.signature(exporter_class).parameters
    options: dict[str, Any] = {}
    if "secret" in parameters:
        # A Standard Webhooks secret: "whsec_" and base64 of 24 bytes.
        options["secret"] = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u"
    return exporter_class(url, **options)


def run(options: Options) -> Result:
    spans = prebuilt_spans(3 if options.quick else 20)
    reps = 2 if options.quick else 7
    span_batches = batches(spans)
    event_batches = [encode_spans(batch) for batch in span_batches]
    events = sum(len(batch) for batch in event_batches)
    payloads = [[event_to_json(event) for event in batch] for batch in event_batches]
    bodies = [("[" + ",".join(batch) + "]").encode() for batch in payloads]

    notes: list[str] = []
    with RedisServer() as server:
        subscriber = _Subscriber(server)
        client = redis.Redis(port=server.port, socket_timeout=5)
        exporter = RedisEventExporter(server.url)
        cases: dict[str, Callable[[], float]] = {
            "encode only (no send)": lambda: timed(_encoding(span_batches)),
            "Redis: raw pipeline of JSON text": lambda: timed(_raw_redis(client, payloads)),
            "Redis: RedisEventExporter.export": lambda: timed(_exporting(exporter, span_batches)),
        }
        receiver = http_client = webhook = None
        webhook_class = webhook_exporter_class()
        if webhook_class is None:
            notes.append(
                "kaygraph_otel_exporters.webhook.WebhookSpanExporter is missing, so the webhook "
                "exporter was not measured."
            )
        else:
            receiver = _Receiver()
            http_client = httpx.Client(timeout=HTTP_TIMEOUT_SECONDS)
            webhook = make_webhook_exporter(webhook_class, receiver.url)
            cases["HTTP: raw httpx POST, one JSON array per batch"] = lambda: timed(
                _raw_http(http_client, receiver.url, bodies)
            )
            cases["HTTP: WebhookSpanExporter.export"] = lambda: timed(
                _exporting(webhook, span_batches)
            )
        try:
            samples = interleaved(cases, reps)
        finally:
            exporter.shutdown()
            client.close()
            subscriber.close()
            if webhook is not None:
                webhook.shutdown()
            if http_client is not None:
                http_client.close()
            if receiver is not None:
                receiver.close()
    return _report(samples, events, len(spans), reps, notes)


def _report(
    samples: dict[str, list[float]], events: int, spans: int, reps: int, notes: list[str]
) -> Result:
    table = Table(
        f"Exporter throughput: {spans} prebuilt spans ({events} events) in batches of "
        f"{BATCH_SPANS} spans, {reps} repetitions",
        ["case", "events/s (median)", "us/event", "time vs raw transport"],
    )
    raw_of = {
        "Redis: RedisEventExporter.export": "Redis: raw pipeline of JSON text",
        "HTTP: WebhookSpanExporter.export": "HTTP: raw httpx POST, one JSON array per batch",
    }
    rates: dict[str, float] = {}
    for name, values in samples.items():
        seconds = median(values)
        rates[name] = events / seconds
        raw = raw_of.get(name)
        versus = f"{median(round_ratios(values, samples[raw])):.2f}" if raw else "-"
        table.add_row(name, f"{rates[name]:,.0f}", f"{seconds / events * 1e6:.1f}", versus)
    table.notes.extend(notes)
    table.notes.append(
        "Redis has one subscriber (redis-cli); the HTTP receiver is uvicorn in another process "
        "that reads each body and replies 204."
    )
    findings = [
        Finding(NAME, "Redis exporter throughput", f"{rates['Redis: RedisEventExporter.export']:,.0f} events/s"),
        Finding(NAME, "encoding alone", f"{rates['encode only (no send)']:,.0f} events/s"),
    ]
    if "HTTP: WebhookSpanExporter.export" in rates:
        findings.append(
            Finding(
                NAME,
                "webhook exporter throughput",
                f"{rates['HTTP: WebhookSpanExporter.export']:,.0f} events/s",
            )
        )
    else:
        findings.append(Finding(NAME, "webhook exporter throughput", "not measured: missing"))
    return Result([table], findings)
