"""Prometheus metrics of a worker, served on its web port at ``/metrics``.

Names are stable: dashboards and ``etl status`` read them.  Labels never carry
event data (no property values, no ids), only stage/sink/reason/topic names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_IN = Counter(
    "etl_events_in_total", "Events received by a stage.", ["stage"], registry=REGISTRY
)
EVENTS_OUT = Counter(
    "etl_events_out_total",
    "Events a stage finished with "
    "(outcome: normalized, rejected, delivered, dead_lettered, gated).",
    ["stage", "outcome"],
    registry=REGISTRY,
)
MESSAGES_IN = Counter(
    "etl_messages_in_total", "Kafka messages received by a stage.", ["stage"], registry=REGISTRY
)
DLQ = Counter(
    "etl_dlq_total",
    "Dead letters produced, by stage and reason.",
    ["stage", "reason"],
    registry=REGISTRY,
)
BY_EVENT = Counter(
    "etl_normalized_by_event_total",
    "Normalized events by event name (known events; others as 'other').",
    ["event"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "etl_batch_size",
    "Events per sink write.",
    ["sink"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000),
    registry=REGISTRY,
)
SINK_LATENCY = Histogram(
    "etl_sink_write_seconds",
    "Duration of one successful sink write.",
    ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RETRIES = Counter(
    "etl_sink_retries_total",
    "Sink write retries, by kind of error.",
    ["sink", "kind"],
    registry=REGISTRY,
)
BACKPRESSURE_SECONDS = Counter(
    "etl_sink_backpressure_seconds_total",
    "Time a sink spent backing off (partition paused).",
    ["sink"],
    registry=REGISTRY,
)
PAUSED_SINCE = Gauge(
    "etl_sink_paused_since_seconds",
    "Unix time a sink started backing off; 0 when delivering.",
    ["sink"],
    registry=REGISTRY,
)
SINK_STOPPED = Gauge(
    "etl_sink_stopped",
    "1 while a sink is stopped by an authentication error.",
    ["sink"],
    registry=REGISTRY,
)
SINK_FAULT = Gauge(
    "etl_sink_fault",
    "1 while a sink is paused by a fault of its environment (disk full, read-only, lock, ...).",
    ["sink", "cause"],
    registry=REGISTRY,
)
GATED = Counter(
    "etl_gated_total",
    "Events not forwarded because a feature flag is off.",
    ["sink", "flag"],
    registry=REGISTRY,
)
LAG = Gauge(
    "etl_consumer_lag",
    "Records between the committed offset and the end of a partition.",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
PRODUCE_RETRIES = Counter(
    "etl_produce_retries_total", "Retries producing to Kafka.", ["stage"], registry=REGISTRY
)

CONTRACT_VIOLATIONS = Counter(
    "etl_contract_violations_total",
    "Tracking-plan violations, by event (declared name or '(undeclared)'), kind and action.",
    ["event", "kind", "action"],
    registry=REGISTRY,
)
SUPPRESSED = Counter(
    "etl_suppressed_total",
    "Events and dead letters of forgotten people held back (drop) or anonymised, by stage.",
    ["stage", "mode"],
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
