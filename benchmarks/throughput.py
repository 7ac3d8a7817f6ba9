"""Exporter throughput: schema events per second through ``export()`` of prebuilt spans.

The spans come from instrumented runs of a Flow of 100 no-op nodes and are
exported in batches of 512, the SDK batch processor's default batch size.
Cases, interleaved:

- encode only: ``encode_spans`` and ``event_to_json``, the CPU work that every
  exporter does before sending;
- Redis, raw pipeline: the same events, already JSON text, sent with one
  redis-py pipeline per batch as the exporter sends them (PUBLISH to the
  channel and XADD to the run's stream): the transport without the exporter;
- ``RedisEventExporter.export`` into a real redis-server that one ``redis-cli``
  subscriber listens to;
- when ``kaygraph_otel_exporters.webhook.WebhookSpanExporter`` exists, its
  ``export`` followed by ``force_flush`` into a uvicorn receiver in another
  process. The flush is part of the measurement because the exporter delivers
  on its own thread. Next to it, raw httpx POSTs send the same events as
  unsigned ``{"events": [...]}`` bodies of at most 256 KiB, the exporter's
  default body limit.
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
    profile_call,
    profile_tables,
    round_ratios,
    timed,
    wait_until,
)
from benchmarks.per_node import capture_spans
from kaygraph_otel_exporters.encoder import encode_spans, event_to_json
from kaygraph_otel_exporters.redis import (
    DEFAULT_CHANNEL,
    DEFAULT_STREAM_MAXLEN,
    DEFAULT_STREAM_PREFIX,
    STREAM_FIELD,
    RedisEventExporter,
)

NAME = "throughput"
ENCODE_CASE = "encode only (no send)"
RAW_REDIS_CASE = "Redis: raw pipeline, PUBLISH + XADD per event"
RAW_HTTP_CASE = "HTTP: raw httpx POSTs of the same bodies, unsigned"
WEBHOOK_CASE = "HTTP: WebhookSpanExporter.export + force_flush"
BATCH_SPANS = 512
RECEIVER_START_TIMEOUT_SECONDS = 20.0
HTTP_TIMEOUT_SECONDS = 10.0
WEBHOOK_BODY_BYTES = 256 * 1024


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the whole request body and reply 204 No Content: a minimal webhook receiver."""
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


def _exporting(
    exporter: SpanExporter, span_batches: list[Sequence[ReadableSpan]]
) -> Callable[[], None]:
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


def _raw_redis(client: redis.Redis, payloads: list[list[tuple[str, str]]]) -> Callable[[], None]:
    """Send what the exporter sends per event, PUBLISH and XADD, from text encoded beforehand."""

    def publish_all() -> None:
        for batch in payloads:
            with client.pipeline(transaction=False) as pipe:
                for correlation_id, text in batch:
                    pipe.publish(DEFAULT_CHANNEL, text)
                    pipe.xadd(
                        DEFAULT_STREAM_PREFIX + correlation_id,
                        {STREAM_FIELD: text},
                        maxlen=DEFAULT_STREAM_MAXLEN,
                        approximate=True,
                    )
                pipe.execute()

    return publish_all


def _webhook_exporting(
    exporter: SpanExporter, span_batches: list[Sequence[ReadableSpan]]
) -> Callable[[], None]:
    export_all = _exporting(exporter, span_batches)

    def export_and_deliver() -> None:
        export_all()
        if not exporter.force_flush(60_000):
            raise RuntimeError(f"{exporter!r} did not deliver its queue within 60 s")
        dropped = exporter.drops.total  # type: ignore[attr-defined]
        if dropped:
            raise RuntimeError(f"{exporter!r} dropped {dropped} events; the rate would be wrong")

    return export_and_deliver


def webhook_bodies(payloads: list[list[str]], max_bytes: int = WEBHOOK_BODY_BYTES) -> list[bytes]:
    """Pack JSON event texts into ``{"events": [...]}`` bodies of at most ``max_bytes``."""
    bodies: list[bytes] = []
    current: list[bytes] = []
    size = len(b'{"events":[]}')
    for text in (text for batch in payloads for text in batch):
        encoded = text.encode()
        if current and size + len(encoded) + 1 > max_bytes:
            bodies.append(b'{"events":[' + b",".join(current) + b"]}")
            current, size = [], len(b'{"events":[]}')
        current.append(encoded)
        size += len(encoded) + 1
    if current:
        bodies.append(b'{"events":[' + b",".join(current) + b"]}")
    return bodies


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
                f"the webhook receiver on port {self.port} did not respond within "
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
    keyed_payloads = [
        [(event["correlation_id"], text) for event, text in zip(batch, texts, strict=True)]
        for batch, texts in zip(event_batches, payloads, strict=True)
    ]
    bodies = webhook_bodies(payloads)

    notes: list[str] = []
    with RedisServer() as server:
        subscriber = _Subscriber(server)
        client = redis.Redis(port=server.port, socket_timeout=5)
        exporter = RedisEventExporter(server.url)
        cases: dict[str, Callable[[], float]] = {
            ENCODE_CASE: lambda: timed(_encoding(span_batches)),
            RAW_REDIS_CASE: lambda: timed(_raw_redis(client, keyed_payloads)),
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
            http_client = httpx.Client(
                timeout=HTTP_TIMEOUT_SECONDS, limits=httpx.Limits(max_connections=1)
            )
            webhook = make_webhook_exporter(webhook_class, receiver.url)
            cases[RAW_HTTP_CASE] = lambda: timed(_raw_http(http_client, receiver.url, bodies))
            cases[WEBHOOK_CASE] = lambda: timed(_webhook_exporting(webhook, span_batches))
        try:
            samples = interleaved(cases, reps)
            if options.profile:
                profiles = {
                    "Redis: RedisEventExporter.export": profile_call(
                        _exporting(exporter, span_batches)
                    )
                }
                if webhook is not None:
                    profiles[WEBHOOK_CASE] = profile_call(_webhook_exporting(webhook, span_batches))
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
    result = _report(samples, events, len(spans), reps, notes)
    if options.profile:
        for case, profile in profiles.items():
            if profile is None:
                result.texts.append("pyinstrument is not installed, so --profile printed nothing.")
                break
            cost = median(samples[case]) / events * 1e6
            title = f"{case}, {len(spans)} spans"
            result.tables.extend(profile_tables(title, profile, cost, "us/event"))
            result.texts.append(f"pyinstrument call tree, {title}\n{profile.tree}")
    return result


def _report(
    samples: dict[str, list[float]], events: int, spans: int, reps: int, notes: list[str]
) -> Result:
    table = Table(
        f"Exporter throughput: {spans} prebuilt spans ({events} events) in batches of "
        f"{BATCH_SPANS} spans, {reps} repetitions",
        ["case", "events/s (median)", "us/event", "time vs raw transport",
         "time vs encode + raw transport"],
    )  # fmt: skip
    raw_of = {
        "Redis: RedisEventExporter.export": RAW_REDIS_CASE,
        WEBHOOK_CASE: RAW_HTTP_CASE,
    }
    rates: dict[str, float] = {}
    for name, values in samples.items():
        seconds = median(values)
        rates[name] = events / seconds
        raw = raw_of.get(name)
        versus = versus_both = "-"
        if raw is not None:
            versus = f"{median(round_ratios(values, samples[raw])):.2f}"
            both = [a + b for a, b in zip(samples[ENCODE_CASE], samples[raw], strict=True)]
            versus_both = f"{median(round_ratios(values, both)):.2f}"
        table.add_row(
            name, f"{rates[name]:,.0f}", f"{seconds / events * 1e6:.1f}", versus, versus_both
        )
    table.notes.extend(notes)
    table.notes.append(
        "Redis has one subscriber (redis-cli); the HTTP receiver is uvicorn in another process "
        "that reads each body and replies 204. Raw cases send text that was encoded before "
        "timing; exporter cases encode inside the timed window."
    )
    findings = [
        Finding(
            NAME,
            "Redis exporter throughput",
            f"{rates['Redis: RedisEventExporter.export']:,.0f} events/s",
        ),
        Finding(NAME, "encoding alone", f"{rates[ENCODE_CASE]:,.0f} events/s"),
    ]
    if WEBHOOK_CASE in rates:
        findings.append(
            Finding(NAME, "webhook exporter throughput", f"{rates[WEBHOOK_CASE]:,.0f} events/s")
        )
    else:
        findings.append(Finding(NAME, "webhook exporter throughput", "not measured: missing"))
    return Result([table], findings)
