"""Circuit breaking for exporters: stop calling a failing backend for a cool-down period.

Without a breaker, an exporter whose backend is down pays a connection attempt
or a timeout for every batch. ``ExportBreaker`` wraps ``pybreaker.CircuitBreaker``:
after ``failure_threshold`` consecutive failed calls the circuit opens, and
``allows_call()`` returns False until ``reset_seconds`` have passed, so the
exporter drops batches without touching the network. The first call after the
cool-down is a trial: success closes the circuit, failure opens it again for
another cool-down. Exceptions listed in ``exclude`` (a backend that responded but
rejected the batch) do not count as failures.
"""

from __future__ import annotations

import datetime
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pybreaker

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_RESET_SECONDS = 10.0

T = TypeVar("T")


class CircuitOpenError(Exception):
    """Raised by ``ExportBreaker.call`` when the circuit is open and the call was not made."""


class ExportBreaker:
    """A circuit breaker for one exporter, with state changes logged at INFO.

    Args:
        exporter: the exporter's name, for log lines.
        target: where the exporter sends events, already stripped of secrets.
        logger: the exporter's module logger.
        failure_threshold: consecutive failed calls that open the circuit.
        reset_seconds: seconds the circuit stays open before a trial call.
        exclude: exception types that mean the backend responded, so they reset the
            failure count like a success does.

    Raises:
        ValueError: when ``failure_threshold`` is not a whole number of at least 1, or
            ``reset_seconds`` is not a positive number.
    """

    def __init__(
        self,
        exporter: str,
        target: str,
        logger: logging.Logger,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        reset_seconds: float = DEFAULT_RESET_SECONDS,
        exclude: tuple[type[BaseException], ...] = (),
    ) -> None:
        validate_breaker_settings(failure_threshold, reset_seconds)
        self._exporter = exporter
        self._target = target
        self._logger = logger
        self._failure_threshold = failure_threshold
        self._reset_seconds = float(reset_seconds)
        self._exclude = exclude
        self._opened_count = 0
        self._count_lock = threading.Lock()
        self._build()

    def _build(self) -> None:
        # The storage is passed in, rather than left to pybreaker, so that allows_call()
        # can read the time the circuit opened through the storage's public property.
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=self._failure_threshold,
            reset_timeout=self._reset_seconds,
            exclude=list(self._exclude),
            listeners=[_StateLog(self)],
            state_storage=self._storage,
            name=self._exporter,
            # The failure that trips the circuit is re-raised as itself, so the
            # exporter counts it under its real cause.
            throw_new_error_on_trip=False,
        )

    @property
    def failure_threshold(self) -> int:
        """Consecutive failed calls that open the circuit."""
        return self._failure_threshold

    @property
    def reset_seconds(self) -> float:
        """Seconds the circuit stays open before a trial call."""
        return self._reset_seconds

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``.

        The state moves from open to half-open only when a call is made after the
        cool-down, so an idle exporter reports ``"open"`` past the cool-down.
        """
        return self._breaker.current_state

    @property
    def consecutive_failures(self) -> int:
        """Failed calls since the last success, or since the circuit last opened."""
        return self._breaker.fail_counter

    @property
    def opened_count(self) -> int:
        """How many times the circuit has opened, trial failures included."""
        with self._count_lock:
            return self._opened_count

    def allows_call(self) -> bool:
        """Return whether a call would reach the backend now.

        False only while the circuit is open and the cool-down has not passed. The
        check takes no lock, so it costs little on the export path.
        """
        if self._breaker.current_state != pybreaker.STATE_OPEN:
            return True
        opened_at = self._storage.opened_at
        if opened_at is None:
            return True
        now = datetime.datetime.now(datetime.timezone.utc)
        return now >= opened_at + datetime.timedelta(seconds=self._reset_seconds)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(*args)`` through the breaker and return its result.

        pybreaker holds its lock for the whole call, so calls through one breaker
        run one at a time.

        Raises:
            CircuitOpenError: the circuit is open, so ``function`` was not called.
            Exception: whatever ``function`` raised; it counts as a failure unless
                its type is excluded.
        """
        try:
            return self._breaker.call(function, *args)
        except pybreaker.CircuitBreakerError:
            raise CircuitOpenError(self.describe_open()) from None

    def describe_open(self) -> str:
        """Return a sentence for log lines about the open circuit."""
        return (
            f"circuit open after {self._failure_threshold} consecutive failures; "
            f"the next attempt is due {self._reset_seconds:g} s after it opened"
        )

    def reinit_after_fork(self) -> None:
        """Start a forked child with a new, closed circuit."""
        # pybreaker holds its lock during a call, so a fork during an export could
        # leave the child's copy locked forever. The child starts with a closed circuit.
        self._count_lock = threading.Lock()
        self._build()

    def _record_transition(self, new_state: str) -> None:
        if new_state == pybreaker.STATE_OPEN:
            with self._count_lock:
                self._opened_count += 1
            self._logger.info(
                "%s circuit to %s opened after %d consecutive failures. Batches are dropped "
                "without a network call for %g s, then one trial call is made",
                self._exporter,
                self._target,
                self._failure_threshold,
                self._reset_seconds,
            )
        elif new_state == pybreaker.STATE_CLOSED:
            self._logger.info(
                "%s circuit to %s closed after a successful trial call",
                self._exporter,
                self._target,
            )
        else:
            self._logger.debug("%s circuit to %s is half-open", self._exporter, self._target)


class _StateLog(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: ExportBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._owner._record_transition(new_state.name)


def validate_breaker_settings(failure_threshold: int, reset_seconds: float) -> None:
    """Raise ValueError unless both circuit breaker settings are in range."""
    if (
        not isinstance(failure_threshold, int)
        or isinstance(failure_threshold, bool)
        or failure_threshold < 1
    ):
        raise ValueError(
            f"breaker_failures must be a whole number of at least 1, got {failure_threshold!r}; "
            f"the default is {DEFAULT_FAILURE_THRESHOLD}"
        )
    if (
        not isinstance(reset_seconds, (int, float))
        or isinstance(reset_seconds, bool)
        or not 0 < reset_seconds < math.inf
    ):
        raise ValueError(
            f"breaker_reset_seconds must be a positive, finite number of seconds, got "
            f"{reset_seconds!r}; "
            f"the default is {DEFAULT_RESET_SECONDS:g}"
        )
