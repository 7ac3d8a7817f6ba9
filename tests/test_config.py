"""Settings resolution: options override KAYGRAPH_OTEL_* variables, which override defaults."""

from __future__ import annotations

import re

import pytest

from kaygraph_otel.attributes import DATA_EVENTS, ERROR_EVENTS, LIFECYCLE_EVENTS
from kaygraph_otel.config import OPTIONS, Settings, env_variables, resolve_settings


def test_defaults_without_options_or_environment() -> None:
    settings = resolve_settings({}, environ={})

    assert settings == Settings()
    assert settings.enabled is True
    assert settings.capture_snapshots is False
    assert settings.max_snapshot_bytes == 4096
    assert settings.scrub_snapshots is True
    assert settings.scrub_patterns == ()
    assert settings.max_item_spans == 100
    assert settings.max_graph_nodes == 500
    assert settings.events == frozenset()
    assert settings.event_signal == "span"


def test_environment_overrides_defaults() -> None:
    environ = {
        "KAYGRAPH_OTEL_ENABLED": "false",
        "KAYGRAPH_OTEL_CAPTURE_SNAPSHOTS": "yes",
        "KAYGRAPH_OTEL_MAX_SNAPSHOT_BYTES": " 2048 ",
        "KAYGRAPH_OTEL_SCRUB_SNAPSHOTS": "0",
        "KAYGRAPH_OTEL_SCRUB_PATTERNS": "internal_[a-z]+,^tok",
        "KAYGRAPH_OTEL_MAX_ITEM_SPANS": "7",
        "KAYGRAPH_OTEL_MAX_GRAPH_NODES": "20",
        "KAYGRAPH_OTEL_EVENTS": "node_started, node_failed",
        "KAYGRAPH_OTEL_EVENT_SIGNAL": "BOTH",
    }

    settings = resolve_settings({}, environ=environ)

    assert settings.enabled is False
    assert settings.capture_snapshots is True
    assert settings.max_snapshot_bytes == 2048
    assert settings.scrub_snapshots is False
    assert settings.scrub_patterns == ("internal_[a-z]+", "^tok")
    assert settings.max_item_spans == 7
    assert settings.max_graph_nodes == 20
    assert settings.events == frozenset({"node_started", "node_failed"})
    assert settings.event_signal == "both"


def test_options_override_environment() -> None:
    environ = {"KAYGRAPH_OTEL_MAX_ITEM_SPANS": "7", "KAYGRAPH_OTEL_CAPTURE_SNAPSHOTS": "true"}

    settings = resolve_settings({"max_item_spans": 3, "capture_snapshots": False}, environ=environ)

    assert settings.max_item_spans == 3
    assert settings.capture_snapshots is False


def test_none_option_falls_back_to_environment() -> None:
    settings = resolve_settings(
        {"max_item_spans": None}, environ={"KAYGRAPH_OTEL_MAX_ITEM_SPANS": "9"}
    )

    assert settings.max_item_spans == 9


def test_blank_environment_variable_is_ignored() -> None:
    settings = resolve_settings({}, environ={"KAYGRAPH_OTEL_MAX_ITEM_SPANS": "   "})

    assert settings.max_item_spans == 100


def test_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAYGRAPH_OTEL_MAX_GRAPH_NODES", "42")

    assert resolve_settings().max_graph_nodes == 42


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("TRUE", True), ("on", True), ("Yes", True), ("0", False), ("off", False)],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    settings = resolve_settings({}, environ={"KAYGRAPH_OTEL_CAPTURE_SNAPSHOTS": text})

    assert settings.capture_snapshots is expected


def test_event_types_expand_to_event_names() -> None:
    settings = resolve_settings({"events": "lifecycle,retry_attempted"}, environ={})

    assert settings.events == frozenset({*LIFECYCLE_EVENTS, "retry_attempted"})


def test_events_accept_a_list() -> None:
    settings = resolve_settings({"events": ["data", "error"]}, environ={})

    assert settings.events == frozenset({*DATA_EVENTS, *ERROR_EVENTS})


def test_emits_filters_by_event_name() -> None:
    everything = resolve_settings({}, environ={})
    lifecycle = resolve_settings({"events": "lifecycle"}, environ={})

    assert everything.emits("retry_attempted") is True
    assert lifecycle.emits("node_started") is True
    assert lifecycle.emits("retry_attempted") is False


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_item_spans": -1}, "max_item_spans=-1"),
        ({"max_item_spans": 1_000_001}, "max_item_spans=1000001"),
        ({"max_item_spans": 2.5}, "max_item_spans=2.5"),
        ({"max_item_spans": True}, "max_item_spans=True"),
        ({"max_snapshot_bytes": 10}, "max_snapshot_bytes=10"),
        ({"max_graph_nodes": 0}, "max_graph_nodes=0"),
        ({"max_graph_nodes": "many"}, "max_graph_nodes='many'"),
        ({"event_signal": "x"}, "event_signal='x'"),
        ({"enabled": "maybe"}, "enabled='maybe'"),
        ({"capture_snapshots": 2}, "capture_snapshots=2"),
    ],
)
def test_invalid_option_names_option_and_value(options: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        resolve_settings(options, environ={})


def test_invalid_event_name_is_listed() -> None:
    with pytest.raises(ValueError, match="events") as excinfo:
        resolve_settings({"events": "node_started,node_exploded"}, environ={})

    assert "'node_exploded'" in str(excinfo.value)
    assert "node_started" in str(excinfo.value)


def test_invalid_regular_expression_is_rejected() -> None:
    with pytest.raises(ValueError, match="scrub_patterns") as excinfo:
        resolve_settings({"scrub_patterns": ["ok", "(unclosed"]}, environ={})

    assert "'(unclosed'" in str(excinfo.value)


@pytest.mark.parametrize("option", ["events", "scrub_patterns"])
def test_non_iterable_list_option_is_rejected(option: str) -> None:
    with pytest.raises(ValueError, match=f"{option}=5"):
        resolve_settings({option: 5}, environ={})


def test_unknown_option_is_named_with_accepted_options() -> None:
    with pytest.raises(ValueError, match="max_items") as excinfo:
        resolve_settings({"max_items": 3}, environ={})

    for option in OPTIONS:
        assert option in str(excinfo.value)


def test_invalid_environment_variable_is_named() -> None:
    environ = {"KAYGRAPH_OTEL_MAX_SNAPSHOT_BYTES": "abc"}

    with pytest.raises(ValueError, match=re.escape("KAYGRAPH_OTEL_MAX_SNAPSHOT_BYTES='abc'")):
        resolve_settings({}, environ=environ)


def test_valid_option_hides_invalid_environment_variable() -> None:
    environ = {"KAYGRAPH_OTEL_MAX_SNAPSHOT_BYTES": "abc"}

    settings = resolve_settings({"max_snapshot_bytes": 512}, environ=environ)

    assert settings.max_snapshot_bytes == 512


def test_env_variables_cover_every_option() -> None:
    names = env_variables()

    assert set(names) == set(OPTIONS)
    assert names["max_snapshot_bytes"] == "KAYGRAPH_OTEL_MAX_SNAPSHOT_BYTES"
    assert all(name.startswith("KAYGRAPH_OTEL_") for name in names.values())
