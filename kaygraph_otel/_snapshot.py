"""Safe, bounded, scrubbed JSON snapshots of node inputs and outputs.

A snapshot catches every exception and only reads the value it describes,
through iteration, ``len`` and ``repr``. Cycles, objects whose ``repr`` fails,
bytes, NaN, huge strings, deep nesting and non-string keys all become plain
JSON values or short markers.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

SCRUBBED = "[scrubbed]"
MAX_DEPTH = 32
MAX_ITEMS = 200
MAX_STRING = 1024
MAX_KEY = 256
MAX_MESSAGE = 4096

# Secret words in keys. The short ones must stand alone between separators, camelCase
# humps or the ends of the key, and the long ones may also end a compound such as
# "accesstoken". Both must end at a word boundary, so "max_tokens", "passenger", "author"
# and "secretary" are kept. Token counts ("token_count", "token_usage") are kept too, and
# "key", "private" and "pin" count only as the whole key, so "cache_key" is kept.
_SECRET_KEY = re.compile(
    r"(?:(?:^|[^a-z0-9])(?:pass|pwd|auth|cvv|ssn)"
    r"|passwords?|passwd|passphrase|secrets?|secret[-_]?keys?|api[-_]?keys?"
    r"|token(?![-_]?(?:counts?|usage|limits?))|private[-_]?keys?|credentials?"
    r"|session[-_]?id|authorization|cookies?|credit[-_]?card|card[-_]?number"
    r"|jwt|bearer|otp|signature|hmac|salt|dsn|connection[-_]?string"
    r"|^(?:key|private|pin)$)"
    r"(?:$|[^a-z0-9])",
    re.IGNORECASE,
)
_CAMEL_HUMP = re.compile(r"([a-z0-9])([A-Z])")
_SECRET_VALUE = re.compile(
    r"\b(?:\d[ -]?){13,19}\b"  # payment card numbers
    r"|\bBearer\s+[A-Za-z0-9._~+/-]{8,}=*"
    r"|\b(?:sk|pk|rk)[-_](?:live|test)?[-_]?[A-Za-z0-9]{16,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic and similar API keys
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|\bhf_[A-Za-z0-9]{30,}"  # Hugging Face tokens
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"  # JSON Web Tokens
    r"|\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"  # credentials in a URL
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----",
)


def safe_str(value: object, limit: int = MAX_MESSAGE) -> str:
    """Return ``str(value)`` cut to ``limit`` characters, or a marker when ``str`` raises."""
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - any failure of user code becomes a marker
        return f"<unprintable {type(value).__name__} object>"
    if not isinstance(text, str):
        return f"<unprintable {type(value).__name__} object>"
    if len(text) > limit:
        return text[:limit] + f"...[{len(text) - limit} more characters]"
    return text


def _size(container: Any, at_least: int) -> int:
    try:
        return len(container)
    except Exception:  # noqa: BLE001 - a container without a working len counts what was read
        return at_least


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a failing __repr__ must not reach the workflow
        return f"<unrepresentable {type(value).__name__} object>"
    return text if isinstance(text, str) else f"<unrepresentable {type(value).__name__} object>"


class _Snapshotter:
    def __init__(self, scrub: bool, extra_patterns: tuple[str, ...]) -> None:
        self.scrub = scrub
        self.extra = [re.compile(p) for p in extra_patterns]
        self.scrubbed: list[str] = []

    def _key_is_secret(self, key: str) -> bool:
        key = key[:MAX_KEY]
        words = _CAMEL_HUMP.sub(r"\1_\2", key)
        return _SECRET_KEY.search(words) is not None or any(p.search(key) for p in self.extra)

    def _text_is_secret(self, text: str) -> bool:
        return _SECRET_VALUE.search(text) is not None or any(p.search(text) for p in self.extra)

    def convert(self, value: Any, path: str, depth: int, seen: set[int]) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value if -(2**53) <= value <= 2**53 else str(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            return self._string(value, path)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return f"<{type(value).__name__} of {len(value)} bytes>"
        if depth >= MAX_DEPTH:
            return f"<{type(value).__name__} nested deeper than {MAX_DEPTH} levels>"
        if id(value) in seen:
            return f"<cycle to {type(value).__name__}>"
        if isinstance(value, Mapping):
            return self._mapping(value, path, depth, seen)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self._sequence(value, path, depth, seen)
        return self._string(_safe_repr(value), path)

    def _string(self, text: str, path: str) -> str:
        # Only the kept part is scanned, so a huge string costs no more than MAX_STRING.
        kept = text[:MAX_STRING]
        if self.scrub and self._text_is_secret(kept):
            self.scrubbed.append(path)
            return SCRUBBED
        if len(text) > MAX_STRING:
            return kept + f"...[{len(text) - MAX_STRING} more characters]"
        return text

    def _mapping(self, value: Mapping[Any, Any], path: str, depth: int, seen: set[int]) -> Any:
        seen.add(id(value))
        result: dict[str, Any] = {}
        try:
            items = list(itertools.islice(value.items(), MAX_ITEMS + 1))
        except Exception:  # noqa: BLE001 - a broken mapping becomes a marker
            seen.discard(id(value))
            return f"<unreadable {type(value).__name__}>"
        for index, (key, item) in enumerate(items):
            if index >= MAX_ITEMS:
                result["..."] = f"{_size(value, len(items)) - MAX_ITEMS} more entries"
                break
            name = key[:MAX_KEY] if isinstance(key, str) else _safe_repr(key)[:MAX_KEY]
            child = f"{path}.{name}"
            if self.scrub and self._key_is_secret(name):
                self.scrubbed.append(child)
                result[name] = SCRUBBED
            else:
                result[name] = self.convert(item, child, depth + 1, seen)
        seen.discard(id(value))
        return result

    def _sequence(self, value: Any, path: str, depth: int, seen: set[int]) -> list[Any]:
        seen.add(id(value))
        try:
            items = list(itertools.islice(value, MAX_ITEMS + 1))
        except Exception:  # noqa: BLE001 - a broken container becomes a marker
            seen.discard(id(value))
            return [f"<unreadable {type(value).__name__}>"]
        result = [
            self.convert(item, f"{path}[{i}]", depth + 1, seen)
            for i, item in enumerate(items[:MAX_ITEMS])
        ]
        if len(items) > MAX_ITEMS:
            result.append(f"... {_size(value, len(items)) - MAX_ITEMS} more items")
        seen.discard(id(value))
        return result


def snapshot_json(
    value: Any, *, max_bytes: int, scrub: bool = True, extra_patterns: tuple[str, ...] = ()
) -> tuple[str, list[str]]:
    """Return the JSON text of a bounded, scrubbed copy of ``value``, and the scrubbed paths.

    The text is at most ``max_bytes`` bytes of UTF-8. A larger snapshot is
    replaced by a JSON object marked truncated that keeps a prefix of the text.
    """
    snapshotter = _Snapshotter(scrub, extra_patterns)
    try:
        converted = snapshotter.convert(value, "$", 0, set())
        text = json.dumps(converted, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except Exception as exc:  # noqa: BLE001 - the marker states why no snapshot was taken
        text = json.dumps({"snapshot_error": safe_str(exc, 200)})
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:
        keep = max(0, max_bytes - 120)
        prefix = encoded[:keep].decode("utf-8", errors="ignore")
        text = json.dumps(
            {"truncated": True, "size_bytes": len(encoded), "prefix": prefix}, ensure_ascii=False
        )
        while len(text.encode("utf-8")) > max_bytes and prefix:
            prefix = prefix[: len(prefix) // 2]
            text = json.dumps(
                {"truncated": True, "size_bytes": len(encoded), "prefix": prefix},
                ensure_ascii=False,
            )
    return text, snapshotter.scrubbed
