"""Webhook request bodies and the bounded queue that keeps them until delivery."""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass

_BODY_PREFIX = b'{"events":['
_BODY_SUFFIX = b"]}"
_SEPARATOR = b","
BODY_OVERHEAD = len(_BODY_PREFIX) + len(_BODY_SUFFIX)


@dataclass(frozen=True)
class Delivery:
    """One request body of events, with the ``webhook-id`` that every retry of it carries.

    Attributes:
        webhook_id: unique message id, ``msg_`` followed by 32 hex digits.
        body: the JSON body ``{"events": [...]}`` as sent and signed.
        event_count: number of events in the body.
    """

    webhook_id: str
    body: bytes
    event_count: int


def new_webhook_id() -> str:
    """Return a new message id. It contains no ``.``, which the signed content uses as separator."""
    return f"msg_{uuid.uuid4().hex}"


def build_deliveries(event_texts: list[str], max_body_bytes: int) -> tuple[list[Delivery], int]:
    """Pack JSON event texts, in order, into bodies of at most ``max_body_bytes`` bytes.

    Returns:
        The deliveries, and the number of events left out because one event alone
        would not fit in a body.
    """
    deliveries: list[Delivery] = []
    too_large = 0
    parts: list[bytes] = []
    size = BODY_OVERHEAD
    for text in event_texts:
        encoded = text.encode()
        if BODY_OVERHEAD + len(encoded) > max_body_bytes:
            too_large += 1
            continue
        added = len(encoded) + (len(_SEPARATOR) if parts else 0)
        if parts and size + added > max_body_bytes:
            deliveries.append(_delivery(parts))
            parts, size = [], BODY_OVERHEAD
            added = len(encoded)
        parts.append(encoded)
        size += added
    if parts:
        deliveries.append(_delivery(parts))
    return deliveries, too_large


def _delivery(parts: list[bytes]) -> Delivery:
    body = _BODY_PREFIX + _SEPARATOR.join(parts) + _BODY_SUFFIX
    return Delivery(new_webhook_id(), body, len(parts))


class DeliveryQueue:
    """A thread-safe first-in, first-out queue of deliveries, bounded by their total body size.

    ``unfinished`` counts deliveries that are queued or taken by ``get`` and not yet
    passed to ``task_done``, so ``join`` waits for the one being delivered too.

    Args:
        max_bytes: the maximum total size, in bytes, of the queued bodies.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._items: collections.deque[Delivery] = collections.deque()
        self._bytes = 0
        self._events = 0
        self._unfinished = 0
        self._closed = False
        self._condition = threading.Condition()

    def put(self, delivery: Delivery) -> bool:
        """Append ``delivery``, or return False and change nothing when full or closed."""
        size = len(delivery.body)
        with self._condition:
            if self._closed or self._bytes + size > self._max_bytes:
                return False
            self._items.append(delivery)
            self._bytes += size
            self._events += delivery.event_count
            self._unfinished += 1
            self._condition.notify_all()
            return True

    def get(self) -> Delivery | None:
        """Remove and return the oldest delivery, waiting for one. None means closed and empty."""
        with self._condition:
            while not self._items and not self._closed:
                self._condition.wait()
            if not self._items:
                return None
            delivery = self._items.popleft()
            self._bytes -= len(delivery.body)
            self._events -= delivery.event_count
            return delivery

    def task_done(self) -> None:
        """Mark one delivery returned by ``get`` as finished, delivered or dropped."""
        with self._condition:
            self._unfinished -= 1
            self._condition.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for all deliveries to finish; True if they did."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._condition:
            while self._unfinished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def close(self) -> list[Delivery]:
        """Reject later puts, wake a waiting ``get``, and remove and return what is still queued."""
        with self._condition:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._events = 0
            self._unfinished -= len(left)
            self._condition.notify_all()
            return left

    @property
    def queued_bytes(self) -> int:
        """Body bytes waiting in the queue, not counting the delivery in progress."""
        with self._condition:
            return self._bytes

    @property
    def queued_events(self) -> int:
        """Events waiting in the queue, not counting the delivery in progress."""
        with self._condition:
            return self._events

    @property
    def unfinished(self) -> int:
        """Deliveries queued or in progress."""
        with self._condition:
            return self._unfinished
