"""An in-process event bus: fan-out of schema events to asyncio subscribers.

Exporters publish from any thread; the dashboard subscribes from its event
loop. The bus keeps the most recent events in a bounded buffer so that a
subscriber that reconnects can replay what it missed, and every subscriber
has its own bounded queue so that a slow one never delays the others.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

Event = dict[str, Any]


class Subscription:
    """One subscriber's bounded queue of events, read with ``async for``.

    When the queue is full the oldest event is dropped and counted in
    ``dropped``, so a subscriber that stops reading costs the bus a bounded
    amount of memory.
    """

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop, max_queue: int) -> None:
        self._bus = bus
        self._loop = loop
        self._queue: collections.deque[Event] = collections.deque(maxlen=max_queue)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def _deliver(self, events: list[Event]) -> None:
        # Runs on the subscriber's event loop, through call_soon_threadsafe.
        overflow = len(self._queue) + len(events) - (self._queue.maxlen or 0)
        if overflow > 0:
            self.dropped += overflow
        self._queue.extend(events)
        self._ready.set()

    def close(self) -> None:
        """Stop receiving events and wake a reader waiting in ``get``."""
        if not self._closed:
            self._closed = True
            self._bus._unsubscribe(self)
            self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def get(self) -> Event | None:
        """Return the next event, waiting for one; None once the subscription is closed."""
        while not self._queue:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def get_nowait(self) -> Event | None:
        """Return the next queued event, or None when the queue is empty."""
        return self._queue.popleft() if self._queue else None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event


class EventBus:
    """Thread-safe publish, asyncio subscribe, with a replay buffer of recent events.

    Args:
        max_buffer: how many of the most recent events are kept for replay.
    """

    def __init__(self, max_buffer: int = 10_000) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, got {max_buffer!r}")
        self._lock = threading.Lock()
        self._buffer: collections.deque[tuple[int, Event]] = collections.deque(maxlen=max_buffer)
        self._positions: dict[str, int] = {}
        self._sequence = itertools.count(1)
        self._subscribers: set[Subscription] = set()
        self.published = 0

    def publish(self, event: Event) -> None:
        """Publish one event; see ``publish_many``."""
        self.publish_many((event,))

    def publish_many(self, events: Iterable[Event]) -> None:
        """Buffer the events and hand them to every subscriber; never blocks on a subscriber."""
        batch = list(events)
        if not batch:
            return
        with self._lock:
            for event in batch:
                self._append(event)
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            try:
                subscription._loop.call_soon_threadsafe(subscription._deliver, batch)
            except RuntimeError:
                # The subscriber's loop is closed: it can never read again.
                self._unsubscribe(subscription)

    def _append(self, event: Event) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            _, oldest = self._buffer[0]
            self._positions.pop(oldest.get("event_id", ""), None)
        position = next(self._sequence)
        self._buffer.append((position, event))
        event_id = event.get("event_id")
        if isinstance(event_id, str):
            self._positions[event_id] = position
        self.published += 1

    def subscribe(self, max_queue: int = 1000) -> Subscription:
        """Return a new subscription that receives every event published from now on.

        Must be called from a running asyncio event loop, which is where the
        events are delivered.
        """
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue!r}")
        subscription = Subscription(self, asyncio.get_running_loop(), max_queue)
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def events_since(self, event_id: str) -> list[Event] | None:
        """Return the buffered events published after ``event_id``.

        Returns None when that event is no longer (or never was) in the buffer,
        so the caller knows that events may have been missed.
        """
        with self._lock:
            position = self._positions.get(event_id)
            if position is None:
                return None
            return [event for seq, event in self._buffer if seq > position]

    def recent(self, limit: int | None = None) -> list[Event]:
        """Return up to ``limit`` of the most recent events, oldest first."""
        with self._lock:
            events = [event for _, event in self._buffer]
        return events if limit is None else events[-limit:]


_default_bus: EventBus | None = None
_default_lock = threading.Lock()


def get_default_bus() -> EventBus:
    """Return the process-wide bus that embedded mode uses, creating it on first use."""
    global _default_bus
    with _default_lock:
        if _default_bus is None:
            _default_bus = EventBus()
        return _default_bus
