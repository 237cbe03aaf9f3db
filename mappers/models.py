"""Typed models: the platform's own events and the versioned unified schema.

``UnifiedEvent`` is the contract of the ``events.normalized`` topic and of the
warehouse ``events`` table.  The hot path builds plain dicts with exactly these
keys (validating a model per event would cost more than the rest of the
pipeline); the tests check every produced dict against this model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

EventType = Literal["track", "identify", "group", "page", "screen", "alias"]


class UnifiedEvent(BaseModel):
    """One normalized analytics event (schema version 1)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(SCHEMA_VERSION, description="Version of this schema.")
    message_id: str = Field(
        description="Source uuid/messageId as given, else a stable content hash (UUID form)."
    )
    type: EventType
    event: str = Field(
        description="Event name as sent (`$identify`, `$pageview`... for non-track calls)."
    )
    distinct_id: str = Field(description="PostHog distinct_id, or Segment userId else anonymousId.")
    user_id: str | None = None
    anonymous_id: str | None = None
    workspace_id: str | None = Field(
        None, description="properties.workspace_id, $groups.workspace or context.groupId."
    )
    trace_id: str | None = Field(None, description="properties.trace_id or $ai_trace_id.")
    timestamp: datetime = Field(description="Event time in UTC, corrected for client clock skew.")
    original_timestamp: datetime | None = Field(
        None, description="Event time as the client stated it."
    )
    stated_timestamp: datetime | None = Field(
        None,
        description="The timestamp the caller set explicitly (Segment `timestamp`), as given.",
    )
    sent_at: datetime | None = Field(
        None, description="When the client sent the event (client clock)."
    )
    received_at: datetime = Field(
        description="When the platform received it (event field, else Kafka timestamp)."
    )
    properties: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    source_topic: str
    source_partition: int
    source_offset: int


# --------------------------------------------------------------------------
# Typed properties of the platform's own events.
#
# Every field is optional (an event may omit a property), but a value that is
# present must coerce safely: "12" -> 12 is fine, "fast" for a latency is not.
# Aliases are the property keys as sent; column names derive from them through
# mappers.identifiers.


class TypedProperties(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
        str_strip_whitespace=False,
    )

    #: Table that holds this event's typed columns.
    table: ClassVar[str]
    #: Property keys whose text is sensitive: never logged, redacted before third parties.
    sensitive: ClassVar[frozenset[str]] = frozenset()


NonNegFloat = Field(None, ge=0)
NonNegInt = Field(None, ge=0)


class FlowExecuted(TypedProperties):
    table: ClassVar[str] = "flow_executed"
    flow_id: str | None = None
    tools_used: list[str] | None = None
    time_ms: float | None = NonNegFloat
    success: bool | None = None
    trace_id: str | None = None


class ToolUsed(TypedProperties):
    table: ClassVar[str] = "tool_used"
    tool_id: str | None = None
    tool_type: str | None = None
    status: str | None = None
    latency_ms: float | None = NonNegFloat
    trace_id: str | None = None


class AgentCreated(TypedProperties):
    table: ClassVar[str] = "agent_created"
    agent_id: str | None = None
    agent_type: str | None = None
    memory_backend: str | None = None
    framework: str | None = None


class PromptBlocked(TypedProperties):
    table: ClassVar[str] = "prompt_blocked"
    sensitive: ClassVar[frozenset[str]] = frozenset({"prompt_preview"})
    match_score: float | None = Field(None, ge=0, le=1)
    source: str | None = None
    prompt_preview: str | None = None
    reason: str | None = None


class RagQueryTriggered(TypedProperties):
    table: ClassVar[str] = "rag_query_triggered"
    vector_db_used: str | None = None
    index_name: str | None = None
    latency_ms: float | None = NonNegFloat
    sources_found: int | None = NonNegInt


class AiGeneration(TypedProperties):
    table: ClassVar[str] = "ai_generation"
    ai_model: str | None = Field(None, alias="$ai_model")
    ai_provider: str | None = Field(None, alias="$ai_provider")
    ai_input_tokens: int | None = Field(None, ge=0, alias="$ai_input_tokens")
    ai_output_tokens: int | None = Field(None, ge=0, alias="$ai_output_tokens")
    ai_input_cost_usd: float | None = Field(None, ge=0, alias="$ai_input_cost_usd")
    ai_output_cost_usd: float | None = Field(None, ge=0, alias="$ai_output_cost_usd")
    ai_total_cost_usd: float | None = Field(None, ge=0, alias="$ai_total_cost_usd")
    ai_latency: float | None = Field(None, ge=0, alias="$ai_latency")
    ai_trace_id: str | None = Field(None, alias="$ai_trace_id")
    ai_http_status: int | None = Field(None, ge=100, le=599, alias="$ai_http_status")


class FeatureFlagCalled(TypedProperties):
    table: ClassVar[str] = "feature_flag_called"
    feature_flag: str | None = Field(None, alias="$feature_flag")
    # A boolean for on/off flags, the variant key for multivariate ones; the
    # column holds both as text ("true", "false", "control", ...).
    feature_flag_response: str | bool | None = Field(None, alias="$feature_flag_response")


#: Event name -> typed model.  Anything else is a generic track event.
KNOWN_EVENTS: dict[str, type[TypedProperties]] = {
    "flow_executed": FlowExecuted,
    "tool_used": ToolUsed,
    "agent_created": AgentCreated,
    "prompt_blocked": PromptBlocked,
    "rag_query_triggered": RagQueryTriggered,
    "$ai_generation": AiGeneration,
    "$feature_flag_called": FeatureFlagCalled,
}

TYPED_TABLES: dict[str, type[TypedProperties]] = {m.table: m for m in KNOWN_EVENTS.values()}
EVENT_FOR_TABLE: dict[str, str] = {m.table: name for name, m in KNOWN_EVENTS.items()}

#: Sensitive property keys across all typed events.
SENSITIVE_PROPERTIES: frozenset[str] = frozenset().union(
    *(m.sensitive for m in KNOWN_EVENTS.values())
)


def property_key(model: type[TypedProperties], field_name: str) -> str:
    """The property key as sent for a model field (its alias, else its name)."""
    info = model.model_fields[field_name]
    return info.alias or field_name
