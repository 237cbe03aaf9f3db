"""Warehouse layout and schema evolution, shared by every warehouse sink.

The tables are described once, in logical types; each warehouse maps the
logical types to its own (``DuckDB``, ``Snowflake``, ``BigQuery``).  Typed
tables start with the declared properties of the platform's events and grow a
nullable column when a known event carries a new property.  A value whose type
conflicts with its column is kept in ``events.properties`` (it always is) and
leaves a row in ``schema_discards`` - it never fails the batch.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mappers.identifiers import normalize_identifier
from mappers.models import KNOWN_EVENTS, TypedProperties

# Logical column types.
STRING = "string"
INTEGER = "integer"
FLOAT = "float"
BOOLEAN = "boolean"
TIMESTAMP = "timestamp"
JSON = "json"
STRING_ARRAY = "string_array"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    description: str = ""


EVENTS_COLUMNS: tuple[Column, ...] = (
    Column(
        "message_id", STRING, "Unique key: the source uuid/messageId, else a stable content hash."
    ),
    Column("type", STRING, "track, identify, group, page, screen or alias."),
    Column("event", STRING, "Event name as sent ($identify, $pageview... for non-track calls)."),
    Column("distinct_id", STRING, "PostHog distinct_id, or Segment userId else anonymousId."),
    Column("user_id", STRING, "Known user id, when there is one."),
    Column("anonymous_id", STRING, "Anonymous/device id, when there is one."),
    Column(
        "workspace_id",
        STRING,
        "Workspace (properties.workspace_id, $groups.workspace, context.groupId).",
    ),
    Column("trace_id", STRING, "Trace id (properties.trace_id or $ai_trace_id)."),
    Column("timestamp", TIMESTAMP, "Event time, UTC, corrected for client clock skew."),
    Column("original_timestamp", TIMESTAMP, "Event time as the client's clock stated it, UTC."),
    Column(
        "stated_timestamp",
        TIMESTAMP,
        "The timestamp the caller set explicitly (Segment style `timestamp`), as given, UTC.",
    ),
    Column("sent_at", TIMESTAMP, "When the client sent it (client clock), UTC."),
    Column("received_at", TIMESTAMP, "When the platform received it, UTC."),
    Column("loaded_at", TIMESTAMP, "When this row was last written to the warehouse, UTC."),
    Column(
        "properties", JSON, "All event properties (typed ones coerced, sensitive ones redacted)."
    ),
    Column(
        "context",
        JSON,
        "Context: library, traits, flag decisions, ETL sanitising notes (context.etl).",
    ),
    Column("schema_version", INTEGER, "Version of the unified schema that produced the row."),
    Column("source_topic", STRING, "Kafka topic the raw event came from."),
    Column("source_partition", INTEGER, "Kafka partition of the raw event."),
    Column("source_offset", INTEGER, "Kafka offset of the raw event."),
)

TYPED_BASE_COLUMNS: tuple[Column, ...] = (
    Column("message_id", STRING, "Unique key; joins to events.message_id."),
    Column("timestamp", TIMESTAMP, "Event time, UTC."),
    Column("distinct_id", STRING, "Who did it."),
    Column("workspace_id", STRING, "Workspace."),
)
RESERVED_TYPED_COLUMNS = frozenset(c.name for c in TYPED_BASE_COLUMNS) | {"loaded_at"}

REJECTED_COLUMNS: tuple[Column, ...] = (
    Column(
        "rejection_id", STRING, "Unique key: hash of stage, source coordinates and batch index."
    ),
    Column(
        "reason",
        STRING,
        "Machine-readable reason (invalid_json, missing_identity, out_of_range, ...).",
    ),
    Column("field", STRING, "Offending field path, when there is one."),
    Column("error", STRING, "Human-readable error detail."),
    Column("stage", STRING, "normalize, or sink:<name> for events a destination refused."),
    Column("event", STRING, "Event name, when it could be read."),
    Column("message_id", STRING, "Message id, when it could be derived."),
    Column("raw_payload", STRING, "Original bytes as text (UTF-8), or base64 when not UTF-8."),
    Column("raw_encoding", STRING, "utf-8 or base64."),
    Column("raw_size", INTEGER, "Size of the original payload in bytes (raw_payload may be cut)."),
    Column("raw_sha256", STRING, "SHA-256 of the original payload."),
    Column("source_topic", STRING, "Kafka coordinates of the original message."),
    Column("source_partition", INTEGER, ""),
    Column("source_offset", INTEGER, ""),
    Column("batch_index", INTEGER, "Position inside a batch envelope, when it came in one."),
    Column("rejected_at", TIMESTAMP, "When it was rejected, UTC."),
)

DISCARD_COLUMNS: tuple[Column, ...] = (
    Column("message_id", STRING, "Event whose property could not go to its typed column."),
    Column("table_name", STRING, "Typed table."),
    Column("column_name", STRING, "Column the property maps to."),
    Column("property_key", STRING, "Property key as sent."),
    Column(
        "reason",
        STRING,
        "type_conflict, reserved_column, identifier_collision, column_budget or nul_key_collision.",
    ),
    Column("value_type", STRING, "Logical type of the value that was sent."),
    Column("column_type", STRING, "Logical type of the existing column."),
    Column("discarded_at", TIMESTAMP, "UTC."),
)


# Identity: derived from identify and alias calls; both merges are order-independent
# and idempotent (sinks/identity.py), so redelivery and replay change nothing.
USERS_COLUMNS: tuple[Column, ...] = (
    Column("user_id", STRING, "Unique key: the known user id (erasure deletes by it)."),
    Column(
        "traits",
        JSON,
        "Latest value of every trait, merged from identify calls in order of event time.",
    ),
    Column("workspace_id", STRING, "Workspace of the latest identify call."),
    Column("first_identified_at", TIMESTAMP, "Event time of the first identify call, UTC."),
    Column("last_identified_at", TIMESTAMP, "Event time of the latest identify call, UTC."),
    Column("last_message_id", STRING, "message_id of the latest identify call."),
    Column(
        "trait_versions",
        JSON,
        "Per trait: [event time, message_id] of the call its value came from (merge order).",
    ),
    Column("loaded_at", TIMESTAMP, "When this row was last written, UTC."),
)
USERS_KEY = ("user_id",)

ALIASES_COLUMNS: tuple[Column, ...] = (
    Column(
        "previous_id",
        STRING,
        "Unique key: an anonymous id or previous user id (erasure deletes by it or user_id).",
    ),
    Column("user_id", STRING, "The user it belongs to (joins to users.user_id)."),
    Column(
        "source",
        STRING,
        "identify (anonymous id seen on an identify call) or alias (an alias call).",
    ),
    Column("message_id", STRING, "The call that made the link (the latest one wins)."),
    Column("timestamp", TIMESTAMP, "Event time of that call, UTC."),
    Column("loaded_at", TIMESTAMP, "When this row was last written, UTC."),
)
ALIASES_KEY = ("previous_id",)


# The analysts' views (same columns in the three warehouses), for the data dictionary.
_DAY_COL = Column("day", "date", "UTC day of the event time.")
_WS_COL = Column("workspace_id", STRING, "Workspace (NULL when the event named none).")


def _quantile_cols(what: str, unit: str) -> tuple[Column, ...]:
    return tuple(
        Column(f"p{p}_{what}", FLOAT, f"{p}th percentile of {unit} (linear interpolation, 0.1).")
        for p in ("50", "95", "99")
    )


METRIC_VIEW_COLUMNS: dict[str, tuple[str, tuple[Column, ...]]] = {
    "flow_success_daily": (
        "day × workspace",
        (
            _DAY_COL,
            _WS_COL,
            Column("flows", INTEGER, "flow_executed events."),
            Column("succeeded", INTEGER, "Flows with success = true."),
            Column("with_outcome", INTEGER, "Flows that reported success at all."),
            Column("success_rate", FLOAT, "succeeded / with_outcome, 4 decimals."),
            *_quantile_cols("time_ms", "time_ms"),
        ),
    ),
    "tool_latency": (
        "day × workspace × tool type",
        (
            _DAY_COL,
            _WS_COL,
            Column("tool_type", STRING, "Tool type."),
            Column("calls", INTEGER, "tool_used events."),
            *_quantile_cols("latency_ms", "latency_ms"),
            Column("error_rate", FLOAT, "Share with a status other than success/ok, 4 decimals."),
        ),
    ),
    "llm_cost_daily": (
        "day × model × provider × workspace",
        (
            _DAY_COL,
            Column("model", STRING, "$ai_model."),
            Column("provider", STRING, "$ai_provider."),
            _WS_COL,
            Column("generations", INTEGER, "$ai_generation events."),
            Column("input_tokens", INTEGER, "Sum of $ai_input_tokens."),
            Column("output_tokens", INTEGER, "Sum of $ai_output_tokens."),
            Column("cost_usd", FLOAT, "Sum of $ai_total_cost_usd, 6 decimals (micro-dollars)."),
        ),
    ),
    "blocked_prompt_rate": (
        "day × workspace",
        (
            _DAY_COL,
            _WS_COL,
            Column("blocked_prompts", INTEGER, "prompt_blocked events."),
            Column("flow_runs", INTEGER, "flow_executed events."),
            Column("events", INTEGER, "All track events."),
            Column(
                "blocked_rate",
                FLOAT,
                "blocked / (blocked + flow runs), 4 decimals: the share of prompt-bearing "
                "activity that was blocked (an estimate).",
            ),
        ),
    ),
    "rag_latency": (
        "day × workspace × vector DB",
        (
            _DAY_COL,
            _WS_COL,
            Column("vector_db", STRING, "vector_db_used."),
            Column("queries", INTEGER, "rag_query_triggered events."),
            *_quantile_cols("latency_ms", "latency_ms"),
            Column("avg_sources_found", FLOAT, "Mean sources_found, 2 decimals."),
        ),
    ),
}

# RudderStack's per-call tables, as views over ``events`` (``aliases`` is the id map table).
LAYOUT_BASE_COLUMNS: tuple[Column, ...] = (
    Column("id", STRING, "RudderStack's name for message_id."),
    Column("message_id", STRING, "Unique key; joins to events.message_id."),
    Column("anonymous_id", STRING, "Anonymous id (resolve through aliases.previous_id)."),
    Column("user_id", STRING, "Known user id (joins to users.user_id)."),
    Column("distinct_id", STRING, "PostHog distinct_id, or userId else anonymousId."),
    Column("workspace_id", STRING, "Workspace."),
    _DAY_COL,
    Column("timestamp", TIMESTAMP, "Event time."),
    Column("original_timestamp", TIMESTAMP, "Event time by the client's clock."),
    Column("sent_at", TIMESTAMP, "When the client sent it."),
    Column("received_at", TIMESTAMP, "When the platform received it."),
    Column("uuid_ts", TIMESTAMP, "RudderStack's name for loaded_at."),
    Column("properties", JSON, "Event properties."),
    Column("context", JSON, "Event context."),
)
LAYOUT_VIEW_COLUMNS: dict[str, tuple[str, tuple[Column, ...]]] = {
    "tracks": (
        "track calls",
        (
            Column("event", STRING, "Event name."),
            Column("event_text", STRING, "Event name (RudderStack's copy)."),
        ),
    ),
    "identifies": ("identify calls", (Column("traits", JSON, "Traits sent with the call."),)),
    "pages": ("page calls", (Column("name", STRING, "Event name ($pageview, page name)."),)),
    "screens": ("screen calls", (Column("name", STRING, "Event name ($screen, screen name)."),)),
    "groups": ("group calls", (Column("group_id", STRING, "The group (workspace) id."),)),
}


def missing_columns(
    existing: set[str] | frozenset[str], columns: tuple[Column, ...]
) -> list[Column]:
    """Base columns an existing table lacks (added on open, so older tables gain new fields)."""
    have = {name.lower() for name in existing}
    return [c for c in columns if c.name.lower() not in have]


def _logical_type(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if len(args) == 1:
            return _logical_type(args[0])
        return STRING  # e.g. str | bool for $feature_flag_response
    if typing.get_origin(annotation) is list:
        return STRING_ARRAY
    return {str: STRING, int: INTEGER, float: FLOAT, bool: BOOLEAN}.get(annotation, JSON)


@dataclass(frozen=True, slots=True)
class TypedTable:
    name: str
    event: str
    model: type[TypedProperties]
    #: property key as sent -> declared column
    declared: dict[str, Column]

    @property
    def columns(self) -> tuple[Column, ...]:
        return TYPED_BASE_COLUMNS + tuple(self.declared.values())


def typed_tables(max_identifier_length: int | None = None) -> dict[str, TypedTable]:
    tables: dict[str, TypedTable] = {}
    for event, model in KNOWN_EVENTS.items():
        declared: dict[str, Column] = {}
        for field_name, info in model.model_fields.items():
            key = info.alias or field_name
            column = normalize_identifier(key.lstrip("$"), max_identifier_length)
            declared[key] = Column(column, _logical_type(info.annotation), info.description or "")
        tables[model.table] = TypedTable(model.table, event, model, declared)
    return tables


def infer_type(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STRING
    return JSON


def coerce_to(column_type: str, value: Any) -> tuple[bool, Any]:
    """(fits, value) for a value going into an existing column of ``column_type``."""
    kind = infer_type(value)
    if kind == column_type:
        return True, value
    if column_type == FLOAT and kind == INTEGER:
        return True, float(value)
    if column_type == INTEGER and kind == FLOAT and value.is_integer() and abs(value) < 2**63:
        return True, int(value)
    if column_type == JSON:
        return True, value
    if (
        column_type == STRING_ARRAY
        and isinstance(value, list)
        and all(isinstance(v, str) for v in value)
    ):
        return True, value
    return False, value


@dataclass(slots=True)
class Discard:
    message_id: str
    table_name: str
    column_name: str
    property_key: str
    reason: str
    value_type: str | None
    column_type: str | None


@dataclass(slots=True)
class TypedPlan:
    """Rows per typed table, the columns to add first, and the discards to record."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    new_columns: dict[str, list[Column]] = field(default_factory=dict)
    discards: list[Discard] = field(default_factory=list)


#: Columns a typed table may grow to (declared ones included); beyond it a new
#: property stays in ``events.properties`` and leaves a ``column_budget`` discard.
MAX_TYPED_COLUMNS = 200
#: Longest name of a column made from a property key (longer names are cut with a hash).
MAX_NEW_COLUMN_NAME = 64


class SchemaTracker:
    """Knows each typed table's columns and plans rows and evolution for a batch."""

    def __init__(
        self, max_identifier_length: int | None = None, max_columns: int = MAX_TYPED_COLUMNS
    ) -> None:
        self.max_identifier_length = max_identifier_length
        self.max_columns = max_columns
        self.new_name_length = min(
            max_identifier_length or MAX_NEW_COLUMN_NAME, MAX_NEW_COLUMN_NAME
        )
        #: table -> column -> the property key that first claimed it (in this process).
        self.owners: dict[str, dict[str, str]] = {}
        self.tables = typed_tables(max_identifier_length)
        self.by_event = {t.event: t for t in self.tables.values()}
        self.declared_names = {
            t.name: frozenset(c.name for c in t.declared.values()) for t in self.tables.values()
        }
        # Columns as they exist in the warehouse, refreshed by the sink.
        self.existing: dict[str, dict[str, str]] = {
            name: {c.name: c.type for c in table.columns} for name, table in self.tables.items()
        }

    def declared_columns(self) -> dict[str, tuple[Column, ...]]:
        """Every table a warehouse sink writes, with the columns this code declares for it."""
        return {
            "events": EVENTS_COLUMNS,
            "rejected_events": REJECTED_COLUMNS,
            "schema_discards": DISCARD_COLUMNS,
            "users": USERS_COLUMNS,
            "aliases": ALIASES_COLUMNS,
            **{t.name: t.columns for t in self.tables.values()},
        }

    def load_existing(self, table: str, columns: dict[str, str]) -> None:
        self.existing[table] = dict(columns)

    def column_for(self, key: str) -> str:
        return normalize_identifier(key.lstrip("$"), self.new_name_length)

    @staticmethod
    def _mapper_discards(ev: dict[str, Any], table: str) -> list[Discard]:
        """Discard rows for what the mapper set aside (NUL-stripped keys that met another key)."""
        etl = (ev.get("context") or {}).get("etl")
        if not isinstance(etl, dict):
            return []
        out = []
        for hit in etl.get("key_collisions") or ():
            if isinstance(hit, dict):
                key = str(hit.get("key", ""))
                out.append(
                    Discard(
                        ev["message_id"],
                        table,
                        str(hit.get("path", "")),
                        key,
                        "nul_key_collision",
                        infer_type(hit.get("value")),
                        None,
                    )
                )
        return out

    def plan(self, events: list[dict[str, Any]]) -> TypedPlan:
        plan = TypedPlan()
        for ev in events:
            name = ev.get("event")
            table = self.by_event.get(name) if isinstance(name, str) else None
            plan.discards.extend(self._mapper_discards(ev, table.name if table else "events"))
            if table is None:
                continue
            existing = self.existing[table.name]
            claimed = self.owners.setdefault(table.name, {})
            row: dict[str, Any] = {
                "message_id": ev["message_id"],
                "timestamp": ev["timestamp"],
                "distinct_id": ev["distinct_id"],
                "workspace_id": ev.get("workspace_id"),
            }
            owners: dict[str, str] = {}
            for key, value in (ev.get("properties") or {}).items():
                declared = table.declared.get(key)
                if declared is not None:
                    if value is not None:
                        if declared.type == STRING and isinstance(value, bool):
                            value = "true" if value else "false"
                        row[declared.name] = value
                    continue
                if value is None or key == "workspace_id":
                    continue  # workspace_id is the source of the base column
                if key.startswith("$"):
                    continue  # PostHog's own properties ($lib, $groups...) are not user columns
                column = self.column_for(key)
                kind = infer_type(value)
                if column in RESERVED_TYPED_COLUMNS or column in self.declared_names[table.name]:
                    plan.discards.append(
                        Discard(
                            ev["message_id"],
                            table.name,
                            column,
                            key,
                            "reserved_column",
                            kind,
                            existing.get(column),
                        )
                    )
                    continue
                if owners.setdefault(column, key) != key or claimed.setdefault(column, key) != key:
                    plan.discards.append(
                        Discard(
                            ev["message_id"],
                            table.name,
                            column,
                            key,
                            "identifier_collision",
                            kind,
                            existing.get(column),
                        )
                    )
                    continue
                current = existing.get(column)
                if current is None and len(existing) >= self.max_columns:
                    plan.discards.append(
                        Discard(
                            ev["message_id"], table.name, column, key, "column_budget", kind, None
                        )
                    )
                    continue
                if current is None:
                    assert kind is not None  # None values never reach a column (skipped above)
                    current = kind
                    existing[column] = kind
                    plan.new_columns.setdefault(table.name, []).append(
                        Column(column, kind, f"From property {key!r}.")
                    )
                fits, coerced = coerce_to(current, value)
                if fits:
                    row[column] = coerced
                else:
                    plan.discards.append(
                        Discard(
                            ev["message_id"],
                            table.name,
                            column,
                            key,
                            "type_conflict",
                            kind,
                            current,
                        )
                    )
            plan.rows.setdefault(table.name, []).append(row)
        return plan

    def forget_new_columns(self, plan: TypedPlan) -> None:
        """Undo the optimistic column bookkeeping after a failed write."""
        for table, cols in plan.new_columns.items():
            for col in cols:
                self.existing[table].pop(col.name, None)


def dedupe_last(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last event per message_id (redelivery inside one batch)."""
    seen: dict[str, dict[str, Any]] = {}
    for ev in events:
        seen[ev["message_id"]] = ev
    return list(seen.values()) if len(seen) != len(events) else events


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
