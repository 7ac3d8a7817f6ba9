"""Settings of ``configure()`` read from ``KAYGRAPH_OTEL_*`` environment variables."""

from __future__ import annotations

import math
import os

ENV_REDIS_URL = "KAYGRAPH_OTEL_REDIS_URL"
ENV_REDIS_CHANNEL = "KAYGRAPH_OTEL_REDIS_CHANNEL"
ENV_REDIS_STREAM_MAXLEN = "KAYGRAPH_OTEL_REDIS_STREAM_MAXLEN"
ENV_FLUSH_INTERVAL_MS = "KAYGRAPH_OTEL_FLUSH_INTERVAL_MS"
ENV_WEBHOOK_URL = "KAYGRAPH_OTEL_WEBHOOK_URL"
ENV_WEBHOOK_SECRET = "KAYGRAPH_OTEL_WEBHOOK_SECRET"
ENV_BREAKER_FAILURES = "KAYGRAPH_OTEL_BREAKER_FAILURES"
ENV_BREAKER_RESET_SECONDS = "KAYGRAPH_OTEL_BREAKER_RESET_SECONDS"


def env_text(name: str) -> str | None:
    """Return the stripped value of environment variable ``name``, or None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_int(name: str, minimum: int, example: str) -> int | None:
    """Return environment variable ``name`` as a whole number of at least ``minimum``.

    Returns None when the variable is unset or blank.

    Raises:
        ValueError: when the value is not a whole number or is below ``minimum``.
    """
    text = env_text(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(
            f"invalid {name} {text!r}: expected a whole number >= {minimum}, such as {example}"
        )
    return value


def env_seconds(name: str, example: str) -> float | None:
    """Return environment variable ``name`` as a positive, finite number of seconds.

    Returns None when the variable is unset or blank.

    Raises:
        ValueError: when the value is not a positive, finite number.
    """
    text = env_text(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:
        raise ValueError(
            f"invalid {name} {text!r}: expected a positive number of seconds, such as {example}"
        )
    return value
