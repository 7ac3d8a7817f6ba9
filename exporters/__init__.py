"""SDK-side exporters for kaygraph-otel: schema events to Redis, webhooks and an in-process bus."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kaygraph_otel_exporters.bus_exporter import BusEventExporter
    from kaygraph_otel_exporters.live import LiveSpanProcessor
    from kaygraph_otel_exporters.redis import RedisEventExporter
    from kaygraph_otel_exporters.setup import configure
    from kaygraph_otel_exporters.webhook import WebhookSpanExporter

__all__ = [
    "BusEventExporter",
    "LiveSpanProcessor",
    "RedisEventExporter",
    "WebhookSpanExporter",
    "configure",
]

# The public names are imported on first access, so that importing one submodule,
# such as ``kaygraph_otel_exporters.bus``, does not also import redis and the SDK.
_LAZY_IMPORTS = {
    "BusEventExporter": "kaygraph_otel_exporters.bus_exporter",
    "LiveSpanProcessor": "kaygraph_otel_exporters.live",
    "RedisEventExporter": "kaygraph_otel_exporters.redis",
    "WebhookSpanExporter": "kaygraph_otel_exporters.webhook",
    "configure": "kaygraph_otel_exporters.setup",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY_IMPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
