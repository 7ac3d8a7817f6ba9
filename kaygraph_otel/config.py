"""Instrumentation settings: arguments override ``KAYGRAPH_OTEL_*`` variables and defaults."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kaygraph_otel.attributes import EVENT_TYPES

ENV_PREFIX = "KAYGRAPH_OTEL_"
EVENT_SIGNALS = ("span", "log", "both")


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one instrumentor.

    Attributes:
        enabled: when False, ``instrument()`` patches nothing.
        capture_snapshots: record ``prep_res`` and ``exec_res`` as ``data_input`` and
            ``data_output`` events. Off by default because they may hold user data.
        max_snapshot_bytes: maximum size of one snapshot's JSON text, in bytes.
        scrub_snapshots: replace values whose key or text looks like a secret.
        scrub_patterns: extra regular expressions, matched against keys and string values.
        max_item_spans: per batch node, how many items get their own child span; the
            rest are counted on the node span.
        max_graph_nodes: the maximum number of nodes recorded in a workflow's structure.
        events: the schema event names to emit; an empty set emits all of them.
        event_signal: "span" records schema events as span events, "log" as log
            records, "both" as both.
        phase_spans: record prep, exec and post as child spans of the node span
            in place of the ``node_preparing`` and ``node_executing`` events.
    """

    enabled: bool = True
    capture_snapshots: bool = False
    max_snapshot_bytes: int = 4096
    scrub_snapshots: bool = True
    scrub_patterns: tuple[str, ...] = ()
    max_item_spans: int = 100
    max_graph_nodes: int = 500
    events: frozenset[str] = field(default_factory=frozenset)
    event_signal: str = "span"
    phase_spans: bool = False

    def emits(self, event_name: str) -> bool:
        return not self.events or event_name in self.events


_BOUNDS: dict[str, tuple[int, int]] = {
    "max_snapshot_bytes": (256, 16 * 1024 * 1024),
    "max_item_spans": (0, 1_000_000),
    "max_graph_nodes": (1, 100_000),
}
_BOOLEANS = ("enabled", "capture_snapshots", "scrub_snapshots", "phase_spans")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _env_name(option: str) -> str:
    return ENV_PREFIX + option.upper()


def _parse_bool(option: str, value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(
        f"invalid {source}={value!r}: expected true or false (also 1/0, yes/no, on/off)"
    )


def _parse_int(option: str, value: Any, source: str) -> int:
    low, high = _BOUNDS[option]
    try:
        number = int(value)
        if isinstance(value, float) or isinstance(value, bool):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid {source}={value!r}: expected an integer from {low} to {high}"
        ) from None
    if not low <= number <= high:
        raise ValueError(f"invalid {source}={value!r}: expected an integer from {low} to {high}")
    return number


def _list_items(value: Any, source: str) -> list[Any]:
    """Split a setting into items: a JSON array of strings, or text separated by commas.

    A regular expression that contains a comma, such as ``\\d{6,8}``, needs the
    JSON form: ``["^acct-\\\\d{6,8}$"]``.
    """
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                items = json.loads(value)
            except ValueError as error:
                raise ValueError(
                    f"invalid {source}={value!r}: it starts with '[' but is not a JSON array "
                    f"of strings ({error})"
                ) from None
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"invalid {source}={value!r}: expected a JSON array of strings")
            return [item for item in items if item.strip()]
        return [item for item in value.split(",") if item.strip()]
    try:
        return list(value)
    except TypeError:
        raise ValueError(
            f"invalid {source}={value!r}: expected a comma-separated string or a list of strings"
        ) from None


def _parse_events(value: Any, source: str) -> frozenset[str]:
    items = _list_items(value, source)
    names: set[str] = set()
    for item in items:
        name = str(item).strip()
        if not name:
            continue
        if name in EVENT_TYPES:
            names.add(name)
            continue
        matched = {event for event, kind in EVENT_TYPES.items() if kind == name}
        if not matched:
            accepted = ", ".join(sorted({*EVENT_TYPES, *EVENT_TYPES.values()}))
            raise ValueError(
                f"invalid entry {name!r} in {source}: expected event names or types: {accepted}"
            )
        names |= matched
    return frozenset(names)


def _parse_patterns(value: Any, source: str) -> tuple[str, ...]:
    items = _list_items(value, source)
    for pattern in items:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(
                f"invalid entry {pattern!r} in {source}: not a regular expression ({exc})"
            ) from None
    return tuple(items)


def _parse_signal(value: Any, source: str) -> str:
    text = str(value).strip().lower()
    if text not in EVENT_SIGNALS:
        raise ValueError(f"invalid {source}={value!r}: expected one of {', '.join(EVENT_SIGNALS)}")
    return text


def _parse(option: str, value: Any, source: str) -> Any:
    if option in _BOOLEANS:
        return _parse_bool(option, value, source)
    if option in _BOUNDS:
        return _parse_int(option, value, source)
    if option == "events":
        return _parse_events(value, source)
    if option == "scrub_patterns":
        return _parse_patterns(value, source)
    if option == "event_signal":
        return _parse_signal(value, source)
    raise AssertionError(option)


OPTIONS: tuple[str, ...] = tuple(Settings.__dataclass_fields__)


def resolve_settings(
    options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from keyword options, then environment variables, then defaults.

    Raises:
        ValueError: an option or variable is unknown or out of range; the message
            names the setting, the value and what is accepted.
    """
    options = dict(options or {})
    environ = os.environ if environ is None else environ
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}: accepted options are {', '.join(OPTIONS)}"
        )
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option in options and options[option] is not None:
            values[option] = _parse(option, options[option], f"option {option}")
            continue
        env_name = _env_name(option)
        raw = environ.get(env_name)
        if raw is not None and raw.strip() != "":
            values[option] = _parse(option, raw, f"environment variable {env_name}")
    return Settings(**values)


def env_variables() -> dict[str, str]:
    """Return each setting's environment variable name, keyed by option name."""
    return {option: _env_name(option) for option in OPTIONS}
