"""Span, span-event and log-record attribute names used by kaygraph-otel.

Workflow and node identity follows the event schema's field names under a
``kaygraph.`` prefix. Workflow spans also carry the OpenTelemetry GenAI
attributes, and node spans the OpenInference ones, so GenAI viewers such as
Phoenix can draw the graph.
"""

from __future__ import annotations

# Identity, on every workflow and node span (set at span start).
NODE_ID = "kaygraph.node_id"
NODE_TYPE = "kaygraph.node_type"
NODE_KIND = "kaygraph.node_kind"  # "workflow", "graph", "node", "batch_item" or "phase"
PHASE = "kaygraph.phase"  # on phase spans: "prep", "exec" or "post"
WORKFLOW_ID = "kaygraph.workflow_id"
WORKFLOW_NAME = "kaygraph.workflow_name"
CORRELATION_ID = "kaygraph.correlation_id"
FRAMEWORK = "kaygraph.framework"  # "kaygraph" or "pocketflow"
PARENT_NODE_ID = "kaygraph.parent_node_id"

# Outcome, set when a node ends.
ACTION = "kaygraph.action"
NEXT_NODE_ID = "kaygraph.next_node_id"
STATE = "kaygraph.state"
ERROR_HANDLED = "kaygraph.error.handled"
ERROR_PHASE = "kaygraph.error.phase"
RETRY_COUNT = "kaygraph.retry.count"
MAX_RETRIES = "kaygraph.retry.max"
FALLBACK_COUNT = "kaygraph.fallback.count"
BATCH_SIZE = "kaygraph.batch.size"
BATCH_ITEM_INDEX = "kaygraph.batch.item_index"
BATCH_SUCCEEDED = "kaygraph.batch.succeeded"
BATCH_FAILED = "kaygraph.batch.failed"
BATCH_SPANS_DROPPED = "kaygraph.batch.item_spans_dropped"
GRAPH_STRUCTURE = "kaygraph.graph.structure"  # JSON of {"nodes": [...], "edges": [...]}
TRANSITIONS = "kaygraph.transitions"  # JSON list of {"from", "action", "to", "count"}
EVENTS_DROPPED = "kaygraph.events_dropped"  # repeated events left out to stay under the span limit
PENDING = "kaygraph.pending"  # on the copy of a just-started span that the live path exports
LIVE_FIRST_EVENT = "kaygraph.live.first_event"  # span events before this index were already sent

# OpenTelemetry GenAI semantic conventions, on workflow spans.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_WORKFLOW_NAME = "gen_ai.workflow.name"
GEN_AI_OPERATION_INVOKE_WORKFLOW = "invoke_workflow"

# OpenInference, on workflow and node spans.
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
GRAPH_NODE_ID = "graph.node.id"
GRAPH_NODE_NAME = "graph.node.name"
GRAPH_NODE_PARENT_ID = "graph.node.parent_id"

# Span-event attributes. Each span event's name is a schema event_name, and
# these attributes become the schema event's ``data`` fields.
EVENT_STATE = "kaygraph.state"
EVENT_ERROR_TYPE = "kaygraph.error.type"
EVENT_ERROR_MESSAGE = "kaygraph.error.message"
EVENT_ATTEMPT = "kaygraph.retry.attempt"
EVENT_MAX_ATTEMPTS = "kaygraph.retry.max_attempts"
EVENT_INPUT_SNAPSHOT = "kaygraph.input_snapshot"  # JSON text
EVENT_OUTPUT_SNAPSHOT = "kaygraph.output_snapshot"  # JSON text
EVENT_SCRUBBED = "kaygraph.snapshot.scrubbed"  # JSON paths that were replaced
EVENT_METRIC_PREFIX = "kaygraph.metric."  # followed by the metric name, a number

# Metric attributes.
OUTCOME = "kaygraph.outcome"  # "completed", "failed" or "handled"
ERROR_TYPE = "error.type"
TRANSITION_FROM = "kaygraph.transition.from"
TRANSITION_ACTION = "kaygraph.transition.action"
TRANSITION_TO = "kaygraph.transition.to"

# Schema event names, grouped by the schema's event_type.
LIFECYCLE_EVENTS = (
    "workflow_started",
    "workflow_completed",
    "workflow_failed",
    "node_started",
    "node_preparing",
    "node_executing",
    "node_completed",
)
DATA_EVENTS = ("data_input", "data_output", "transition")
ERROR_EVENTS = ("node_failed", "retry_attempted", "fallback_triggered")
METRIC_EVENTS = ("execution_time", "queue_depth", "throughput_metric")

EVENT_TYPES: dict[str, str] = {
    **dict.fromkeys(LIFECYCLE_EVENTS, "lifecycle"),
    **dict.fromkeys(DATA_EVENTS, "data"),
    **dict.fromkeys(ERROR_EVENTS, "error"),
    **dict.fromkeys(METRIC_EVENTS, "metric"),
}
