"""The task that reads every event from the dashboard's bus into the run store and the metrics."""

from __future__ import annotations

import asyncio
import logging

from kaygraph_otel_dashboard.metrics import NodeMetrics
from kaygraph_otel_dashboard.runs import Event, RunStore
from kaygraph_otel_exporters.bus import EventBus, Subscription

logger = logging.getLogger(__name__)

DEFAULT_FEED_QUEUE = 100_000
# The subscription returns queued events without suspending, so the task yields to
# the event loop after this many events to keep requests served during a burst.
YIELD_EVERY_EVENTS = 500


class EventFeed:
    """Subscribe to ``bus`` and apply each event to ``runs`` and ``metrics``.

    Call ``start()`` on the app's event loop and ``await stop()`` before it ends.
    The feed's subscription is bounded like any other; events it had to drop
    are counted in ``dropped`` and logged.
    """

    def __init__(
        self,
        bus: EventBus,
        runs: RunStore,
        metrics: NodeMetrics,
        max_queue: int = DEFAULT_FEED_QUEUE,
    ) -> None:
        self._bus = bus
        self.runs = runs
        self.metrics = metrics
        self._max_queue = max_queue
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        self._reported_drops = 0

    @property
    def dropped(self) -> int:
        return self._subscription.dropped if self._subscription is not None else 0

    def start(self) -> None:
        """Subscribe, apply the events the bus already buffers, and start the task.

        A second call does nothing.
        """
        if self._task is not None:
            return
        self._subscription = self._bus.subscribe(self._max_queue)
        # Subscribing first means that an event published meanwhile is in both the
        # buffer and the queue, and the run store drops the second copy.
        for event in self._bus.recent():
            self.ingest(event)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="kaygraph-otel dashboard event feed"
        )

    async def stop(self) -> None:
        """Close the subscription and wait for the task to end."""
        subscription, self._subscription = self._subscription, None
        task, self._task = self._task, None
        if subscription is not None:
            subscription.close()
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def ingest(self, event: Event) -> None:
        """Apply one event now; a duplicate (same ``event_id``) is ignored."""
        record = self.runs.add(event)
        if record is None:
            return
        self.metrics.record(event, record.kind_of(event))
        self.applied += 1

    async def _run(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        since_yield = 0
        async for event in subscription:
            since_yield += 1
            if since_yield >= YIELD_EVERY_EVENTS:
                since_yield = 0
                await asyncio.sleep(0)
            try:
                self.ingest(event)
            except Exception:
                logger.exception(
                    "Skipped event %r that the run store could not apply", event.get("event_id")
                )
            if subscription.dropped != self._reported_drops:
                logger.warning(
                    "The dashboard's run store fell behind and dropped %d event(s) in total; "
                    "run states and metrics may be incomplete",
                    subscription.dropped,
                )
                self._reported_drops = subscription.dropped
