"""Snapshots of node inputs and outputs: safe, bounded, valid JSON, scrubbed of secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from kaygraph_otel._snapshot import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STRING,
    SCRUBBED,
    safe_str,
    snapshot_json,
)


def snapshot(value: Any, max_bytes: int = 1 << 20, **options: Any) -> tuple[Any, list[str]]:
    """Return the parsed snapshot of ``value`` and the scrubbed paths."""
    text, scrubbed = snapshot_json(value, max_bytes=max_bytes, **options)
    assert len(text.encode("utf-8")) <= max_bytes
    return json.loads(text), scrubbed


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class NonStringRepr:
    def __repr__(self) -> Any:
        return 42


class RaisingStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str is broken")


class BrokenMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("cannot iterate")

    def __len__(self) -> int:
        return 1


class BrokenList(list):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("cannot iterate")


def test_plain_json_values_round_trip() -> None:
    value = {"text": "héllo", "count": 3, "ratio": 0.5, "ok": True, "none": None, "list": [1, "a"]}

    parsed, scrubbed = snapshot(value)

    assert parsed == value
    assert scrubbed == []


def test_snapshot_leaves_value_unchanged() -> None:
    value = {"password": "hunter2", "items": [1, 2, {"token": "abc"}]}
    before = json.dumps(value)

    snapshot(value)

    assert json.dumps(value) == before


def test_cycles_become_markers() -> None:
    cyclic: dict[str, Any] = {"name": "root"}
    cyclic["self"] = cyclic
    looped: list[Any] = [1]
    looped.append(looped)

    parsed, _ = snapshot({"dict": cyclic, "list": looped})

    assert parsed["dict"]["name"] == "root"
    assert parsed["dict"]["self"] == "<cycle to dict>"
    assert parsed["list"] == [1, "<cycle to list>"]


def test_shared_reference_is_not_a_cycle() -> None:
    shared = {"a": 1}

    parsed, _ = snapshot([shared, shared])

    assert parsed == [{"a": 1}, {"a": 1}]


def test_raising_repr_becomes_marker() -> None:
    parsed, _ = snapshot({"object": RaisingRepr(), "odd": NonStringRepr()})

    assert parsed["object"] == "<unrepresentable RaisingRepr object>"
    assert parsed["odd"] == "<unrepresentable NonStringRepr object>"


def test_other_objects_use_repr() -> None:
    class Point:
        def __repr__(self) -> str:
            return "Point(1, 2)"

    parsed, _ = snapshot(Point())

    assert parsed == "Point(1, 2)"


def test_bytes_are_described() -> None:
    parsed, _ = snapshot([b"abc", bytearray(b"\x00\x01"), memoryview(b"wxyz")])

    assert parsed == ["<bytes of 3 bytes>", "<bytearray of 2 bytes>", "<memoryview of 4 bytes>"]


def test_non_finite_floats_become_strings() -> None:
    parsed, _ = snapshot([float("nan"), float("inf"), float("-inf"), 1.5])

    assert parsed == ["nan", "inf", "-inf", 1.5]


def test_large_integers_become_strings() -> None:
    parsed, _ = snapshot([2**53, 2**53 + 1, -(2**60)])

    assert parsed == [2**53, str(2**53 + 1), str(-(2**60))]


def test_huge_string_is_cut() -> None:
    parsed, _ = snapshot("x" * 1_000_000)

    assert parsed.startswith("x" * MAX_STRING)
    assert parsed.endswith(f"...[{1_000_000 - MAX_STRING} more characters]")


def test_deep_nesting_is_cut() -> None:
    deep: Any = "bottom"
    for _ in range(1000):
        deep = {"next": deep}

    parsed, _ = snapshot(deep)

    levels = 0
    while isinstance(parsed, dict):
        parsed = parsed["next"]
        levels += 1
    assert levels == MAX_DEPTH
    assert parsed == f"<dict nested deeper than {MAX_DEPTH} levels>"


def test_deep_lists_are_cut() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]

    parsed, _ = snapshot(deep)

    assert json.dumps(parsed).count("[") == MAX_DEPTH


def test_non_string_keys_become_strings() -> None:
    parsed, _ = snapshot({1: "one", (2, 3): "pair", None: "none", RaisingRepr(): "broken"})

    assert parsed == {
        "1": "one",
        "(2, 3)": "pair",
        "None": "none",
        "<unrepresentable RaisingRepr object>": "broken",
    }


def test_long_containers_are_cut() -> None:
    parsed, _ = snapshot({"list": list(range(MAX_ITEMS + 5)), "map": dict.fromkeys(range(300), 0)})

    assert parsed["list"][:MAX_ITEMS] == list(range(MAX_ITEMS))
    assert parsed["list"][MAX_ITEMS] == "... 5 more items"
    assert len(parsed["list"]) == MAX_ITEMS + 1
    assert parsed["map"]["..."] == f"{300 - MAX_ITEMS} more entries"


def test_sets_and_tuples_become_lists() -> None:
    parsed, _ = snapshot({"tuple": (1, 2), "set": {3}, "frozen": frozenset({4})})

    assert parsed == {"tuple": [1, 2], "set": [3], "frozen": [4]}


def test_broken_containers_become_markers() -> None:
    parsed, _ = snapshot({"mapping": BrokenMapping(), "list": BrokenList([1])})

    assert parsed["mapping"] == "<unreadable BrokenMapping>"
    assert parsed["list"] == ["<unreadable BrokenList>"]


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "userPassword",
        "passwd",
        "api_key",
        "apiKey",
        "X-API-Key",
        "access_token",
        "accesstoken",
        "refreshToken",
        "SECRETKEY",
        "client_secret",
        "Authorization",
        "cookie",
        "session_id",
        "private_key",
        "credentials",
        "credit_card",
        "card_number",
        "cvv",
        "ssn",
    ],
)
def test_secret_keys_are_scrubbed(key: str) -> None:
    parsed, scrubbed = snapshot({"user": "ada", key: {"nested": "value"}})

    assert parsed == {"user": "ada", key: SCRUBBED}
    assert scrubbed == [f"$.{key}"]


@pytest.mark.parametrize(
    "key",
    [
        "max_tokens",
        "prompt_tokens",
        "token_count",
        "tokenizer",
        "passenger",
        "compass",
        "author",
        "secretary",
        "classname",
        "keyword",
    ],
)
def test_ordinary_keys_are_kept(key: str) -> None:
    parsed, scrubbed = snapshot({key: 12})

    assert parsed == {key: 12}
    assert scrubbed == []


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature",
        "card 4111 1111 1111 1111 on file",
        "card 4111-1111-1111-1111",
        "key sk_live_abcdefghijklmnop1234",
        "AKIAABCDEFGHIJKLMNOP",
        "ghp_abcdefghijklmnopqrstuvwx",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE...",
    ],
)
def test_secret_values_are_scrubbed(text: str) -> None:
    parsed, scrubbed = snapshot({"notes": [text]})

    assert parsed == {"notes": [SCRUBBED]}
    assert scrubbed == ["$.notes[0]"]


def test_ordinary_text_is_kept() -> None:
    text = "order 12345 shipped on 2024-05-01 to Bearer Street"

    parsed, scrubbed = snapshot(text)

    assert parsed == text
    assert scrubbed == []


def test_secret_in_repr_is_scrubbed() -> None:
    class Client:
        def __repr__(self) -> str:
            return "Client(header='Bearer abcdef123456')"

    parsed, scrubbed = snapshot({"client": Client()})

    assert parsed == {"client": SCRUBBED}
    assert scrubbed == ["$.client"]


def test_scrubbing_can_be_turned_off() -> None:
    parsed, scrubbed = snapshot({"password": "hunter2"}, scrub=False)

    assert parsed == {"password": "hunter2"}
    assert scrubbed == []


def test_extra_patterns_match_keys_and_values() -> None:
    parsed, scrubbed = snapshot(
        {"internal_ref": "abc", "note": "ticket INT-9999", "other": "fine"},
        extra_patterns=("^internal_", r"INT-\d+"),
    )

    assert parsed == {"internal_ref": SCRUBBED, "note": SCRUBBED, "other": "fine"}
    assert scrubbed == ["$.internal_ref", "$.note"]


@pytest.mark.parametrize("max_bytes", [64, 100, 500, 4096])
def test_size_cap_is_respected(max_bytes: int) -> None:
    value = {"rows": [{"id": i, "text": 'é\x00"\\' * 40} for i in range(200)]}

    text, _ = snapshot_json(value, max_bytes=max_bytes)

    assert len(text.encode("utf-8")) <= max_bytes
    parsed = json.loads(text)
    assert parsed["truncated"] is True
    assert parsed["size_bytes"] > max_bytes
    assert isinstance(parsed["prefix"], str)


def test_small_snapshot_is_not_truncated() -> None:
    text, _ = snapshot_json({"a": 1}, max_bytes=64)

    assert json.loads(text) == {"a": 1}


def test_safe_str_of_raising_str() -> None:
    assert safe_str(RaisingStr()) == "<unprintable RaisingStr object>"


def test_safe_str_cuts_long_text() -> None:
    text = safe_str("y" * 50, limit=10)

    assert text == "y" * 10 + "...[40 more characters]"
