"""Retry timing for webhook delivery: exponential backoff with jitter, and ``Retry-After``."""

from __future__ import annotations

import datetime
import email.utils
import random


def backoff_delay(
    attempt: int, initial: float, maximum: float, *, rng: random.Random | None = None
) -> float:
    """Return the seconds to wait after failed attempt number ``attempt`` (1 for the first).

    The delay doubles with each attempt from ``initial`` up to ``maximum``, and a
    random factor between 0.5 and 1 spreads out the retries of many senders.
    """
    ceiling = min(maximum, initial * 2 ** (attempt - 1))
    uniform = rng.uniform if rng is not None else random.uniform
    return ceiling * uniform(0.5, 1.0)


def parse_retry_after(
    value: str | None, maximum: float, *, now: datetime.datetime | None = None
) -> float | None:
    """Return the delay, in seconds, that a ``Retry-After`` header requests, capped at ``maximum``.

    The header contains either a whole number of seconds or an HTTP date. A date in
    the past yields 0. Returns None when the header is missing or invalid, so the
    caller falls back to its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), maximum)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are in GMT, so a date without a zone is read as GMT too.
        when = when.replace(tzinfo=datetime.timezone.utc)
    current = now if now is not None else datetime.datetime.now(datetime.timezone.utc)
    return min(max(0.0, (when - current).total_seconds()), maximum)
