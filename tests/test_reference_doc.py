"""docs/reference.md names every attribute, event, metric and environment variable in the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kaygraph_otel import attributes as attr
from kaygraph_otel._metrics import INSTRUMENTS
from kaygraph_otel.config import Settings, env_variables

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
CODE_DIRS = ("kaygraph_otel", "exporters", "dashboard")


def documented(name: str) -> bool:
    return f"`{name}`" in REFERENCE


def attribute_names() -> list[str]:
    names = []
    for key, value in vars(attr).items():
        if key.isupper() and isinstance(value, str) and "." in value and not value.endswith("."):
            names.append(value)
    return names


@pytest.mark.parametrize("name", attribute_names())
def test_attribute_documented(name: str) -> None:
    assert documented(name), f"attribute {name} is missing from docs/reference.md"


@pytest.mark.parametrize("name", sorted(attr.EVENT_TYPES))
def test_event_documented_with_type(name: str) -> None:
    row = re.search(rf"^\| `{name}` \| (\w+) \|", REFERENCE, re.MULTILINE)
    assert row is not None, f"event {name} has no row in docs/reference.md"
    assert row.group(1) == attr.EVENT_TYPES[name]


@pytest.mark.parametrize("name", sorted(INSTRUMENTS))
def test_metric_documented_with_unit(name: str) -> None:
    row = re.search(rf"^\| `{re.escape(name)}` \| [^|]+ \| `([^`]+)` \|", REFERENCE, re.MULTILINE)
    assert row is not None, f"metric {name} has no row in docs/reference.md"
    assert row.group(1) == INSTRUMENTS[name][0]


@pytest.mark.parametrize("option", sorted(env_variables()))
def test_setting_documented_with_default(option: str) -> None:
    variable = env_variables()[option]
    row = re.search(rf"^\| `{variable}` \| `{option}` \| ([^|]+) \|", REFERENCE, re.MULTILINE)
    assert row is not None, f"{variable} has no row naming option {option}"
    default = getattr(Settings(), option)
    text = row.group(1).strip()
    if isinstance(default, bool):
        assert text == str(default).lower()
    elif isinstance(default, int):
        assert text == str(default)


def test_every_environment_variable_in_code_documented() -> None:
    found = set()
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(
                re.findall(r"KAYGRAPH_OTEL_[A-Z_]*[A-Z]", path.read_text(encoding="utf-8"))
            )
    found.discard("KAYGRAPH_OTEL_")
    missing = sorted(name for name in found if not documented(name))
    assert not missing, f"undocumented environment variables: {missing}"
