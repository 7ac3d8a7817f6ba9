"""The kaygraph-otel dashboard: a Starlette app that streams schema events to browsers."""
