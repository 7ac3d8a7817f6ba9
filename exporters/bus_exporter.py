"""Export kaygraph-otel schema events to an in-process ``EventBus``.

Usage::

    from opentelemetry.sdk.trace import TracerProvider
    from kaygraph_otel_exporters import BusEventExporter, LiveSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(LiveSpanProcessor(BusEventExporter()))

This is the embedded mode: the workflow and the dashboard run in one process
and share ``get_default_bus()``, so no Redis is needed.
"""

from __future__ import annotations

import logging

from kaygraph_otel_exporters._base import Event, SchemaEventExporter
from kaygraph_otel_exporters._drops import DEFAULT_LOG_INTERVAL_SECONDS
from kaygraph_otel_exporters.bus import EventBus, get_default_bus

logger = logging.getLogger(__name__)


class BusEventExporter(SchemaEventExporter):
    """Publish the schema events of kaygraph-otel spans to an ``EventBus``.

    Args:
        bus: the bus that receives the events. Defaults to ``get_default_bus()``.
        include_started: whether an ended span also yields its started event. A
            ``LiveSpanProcessor`` sets it False because it sends that event when the
            span starts; behind a plain ``BatchSpanProcessor`` keep it True.
        drop_log_interval: minimum number of seconds between two warnings about
            dropped events.
    """

    def __init__(
        self,
        bus: EventBus | None = None,
        *,
        include_started: bool = True,
        drop_log_interval: float = DEFAULT_LOG_INTERVAL_SECONDS,
    ) -> None:
        if bus is not None and not isinstance(bus, EventBus):
            raise TypeError(
                f"bus must be an EventBus, got {type(bus).__name__}; "
                "pass None to use the process-wide default bus"
            )
        self._bus = bus if bus is not None else get_default_bus()
        super().__init__(
            name=type(self).__name__,
            target=f"EventBus at {id(self._bus):#x}",
            logger=logger,
            include_started=include_started,
            drop_log_interval=drop_log_interval,
        )

    @property
    def bus(self) -> EventBus:
        """The bus that events are published to."""
        return self._bus

    def _send(self, events: list[Event]) -> None:
        self._bus.publish_many(events)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bus={self._bus!r})"
