"""PostHog: ``POST {host}/batch/`` through the official SDK's synchronous request path.

``posthog.request.batch_post`` returns only after PostHog answered, and raises
``APIError`` (status, detail, Retry-After) otherwise - so a batch is
acknowledged on Kafka only once PostHog has it.  The SDK's background queue is
never used: it drops events when full and after its own retries.

Mapping (unified event -> PostHog capture event):

* ``uuid``: the ``message_id`` when it is a canonical UUID.  Otherwise (e.g.
  a Segment ``messageId`` like ``"msg-42"``) a UUIDv5 of the message id in
  :data:`MESSAGE_ID_NAMESPACE`, with the original kept in
  ``properties.$etl_message_id``.  The derivation is deterministic, so
  redelivery and replays carry the same uuid and PostHog deduplicates them.
* ``distinct_id``, ``timestamp`` (UTC, skew-corrected), ``event`` as unified.
* ``properties`` as unified, plus ``$groups.workspace`` from ``workspace_id``;
  ``$identify`` gets ``$set`` from the traits (unified ``context.traits``) and
  ``$anon_distinct_id``; ``$groupidentify`` gets ``$group_type``/``$group_key``/
  ``$group_set``; ``$ai_generation`` keeps its ``$ai_*`` properties as they are.
* Replays and backfills (``ETL_REPLAY=true``) send ``historical_migration``.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from etl.config import PostHogSettings, SinkSection
from sinks.base import Capabilities, RetryableSinkError, WriteResult
from sinks.http import TRANSIENT_ERRORS, HttpSink, iso, raise_for_refusal

if TYPE_CHECKING:
    from sinks.settings import Settings

log = logging.getLogger("etl.sinks.posthog")


class PostHogSinkSettings(PostHogSettings, SinkSection):
    """The PostHog project (shared with the flag service) plus how the sink sends to it."""

    required: ClassVar[tuple[str, ...]] = ("api_key", "host")

    gzip: bool = Field(True, description="Gzip request bodies.")
    timeout: float = Field(
        15.0, gt=0, description="Seconds per /batch/ request; a timeout is retried."
    )
    max_request_bytes: int = Field(
        20 * 1024 * 1024 - 1, ge=1024, description="Largest request body (PostHog: < 20 MB)."
    )
    max_event_bytes: int = Field(
        900 * 1024,
        ge=1024,
        description="Largest event; bigger ones are truncated to fit (SDK cap 900 KiB).",
    )
    max_batch_events: int = Field(1000, ge=1, description="Most events per request.")


#: Namespace of the uuids derived from message ids that are not UUIDs.
MESSAGE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://analytics-etl/message_id")
_CANONICAL_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
#: Headroom for what the SDK adds to the body besides the events.
ENVELOPE_SLACK = 256


def posthog_uuid(message_id: str) -> str:
    """The uuid PostHog receives for ``message_id`` (see the module docstring)."""
    if _CANONICAL_UUID.match(message_id):
        return message_id
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, message_id))


def envelope_bytes(api_key: str) -> int:
    """Body bytes besides the events, as the SDK encodes them."""
    sent_at = datetime.now(tz=UTC).replace(microsecond=1).isoformat()
    body = {"batch": [], "historical_migration": False, "sent_at": sent_at, "api_key": api_key}
    return len(json.dumps(body)) + ENVELOPE_SLACK


class PostHogSink(HttpSink):
    name = "posthog"
    #: The SDK's json.dumps separates list items with ", ".
    separator_bytes = 2

    @classmethod
    def declare_capabilities(cls, settings: Settings) -> Capabilities:
        ph = settings.posthog
        key = ph.api_key.get_secret_value() if ph.api_key else ""
        return Capabilities(
            max_batch_events=ph.max_batch_events,
            max_batch_bytes=ph.max_request_bytes - envelope_bytes(key),
            max_event_bytes=ph.max_event_bytes,
        )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        ph = settings.posthog
        if ph.api_key is None:
            raise ValueError("sink 'posthog' needs posthog.api_key (POSTHOG_API_KEY)")
        self._api_key = ph.api_key.get_secret_value()
        self.host = ph.host.rstrip("/")
        self.gzip = ph.gzip
        self.timeout = ph.timeout
        self.historical = settings.replay
        # The SDK logs whole request bodies at DEBUG: property values must not reach our logs.
        sdk_log = logging.getLogger("posthog")
        if sdk_log.getEffectiveLevel() < logging.WARNING:
            sdk_log.setLevel(logging.WARNING)

    # -------------------------------------------------------------- mapping
    def to_payload(self, event: dict[str, Any]) -> dict[str, Any]:
        props = dict(event.get("properties") or {})
        context = event.get("context") or {}
        message_id = event["message_id"]
        ph_uuid = posthog_uuid(message_id)
        if ph_uuid != message_id:
            props["$etl_message_id"] = message_id
        workspace = event.get("workspace_id")
        if workspace:
            groups = props.get("$groups")
            props["$groups"] = {
                **(groups if isinstance(groups, dict) else {}),
                "workspace": workspace,
            }
        traits = context.get("traits")
        traits = traits if isinstance(traits, dict) else None
        etype = event.get("type")
        if etype == "identify":
            current = props.get("$set")
            merged = {**(current if isinstance(current, dict) else {}), **(traits or {})}
            if merged:
                props["$set"] = merged
            anonymous = event.get("anonymous_id")
            if anonymous and anonymous != event["distinct_id"]:
                props.setdefault("$anon_distinct_id", anonymous)
        elif etype == "group" and workspace:
            props.setdefault("$group_type", "workspace")
            props.setdefault("$group_key", workspace)
            if traits:
                props.setdefault("$group_set", traits)
        elif etype == "page":
            page = context.get("page")
            url = props.get("url") or (page.get("url") if isinstance(page, dict) else None)
            if isinstance(url, str):
                props.setdefault("$current_url", url)
        elif etype == "screen" and isinstance(props.get("name"), str):
            props.setdefault("$screen_name", props["name"])
        elif etype == "alias" and isinstance(props.get("previous_id"), str):
            props.setdefault("alias", props["previous_id"])
        if isinstance(context.get("ip"), str):
            props.setdefault("$ip", context["ip"])
        return {
            "uuid": ph_uuid,
            "event": event["event"],
            "distinct_id": event["distinct_id"],
            "timestamp": iso(event["timestamp"]),
            "properties": props,
        }

    def encode(self, payload: dict[str, Any]) -> str:
        # Exactly the SDK's encoding of an event (json.dumps defaults: ASCII, ", " and ": ").
        return json.dumps(payload)

    def item(self, payload: dict[str, Any], encoded: Any) -> Any:
        return payload  # the SDK encodes the body itself

    def truncatable(self, event: dict[str, Any]) -> list[tuple[str, Any]]:
        roots: list[tuple[str, Any]] = [("", event.get("properties") or {})]
        traits = (event.get("context") or {}).get("traits")
        if event.get("type") in ("identify", "group") and isinstance(traits, dict):
            roots.append(("context.traits.", traits))
        return roots

    # ---------------------------------------------------------------- write
    def write(self, events: list[dict[str, Any]]) -> WriteResult:
        # The SDK is an optional extra: imported when the sink first sends.
        from posthog.request import APIError, batch_post

        batch = [self.prepare(ev)[0] for ev in events]
        try:
            batch_post(
                self._api_key,
                host=self.host,
                gzip=self.gzip,
                timeout=self.timeout,
                batch=batch,
                historical_migration=self.historical,
            )
        except APIError as exc:
            status = exc.status if isinstance(exc.status, int) else 0
            result = raise_for_refusal("PostHog", status, exc.message, exc.retry_after, events)
            self.forget(events)
            return result
        except TRANSIENT_ERRORS as exc:
            raise RetryableSinkError(
                f"PostHog unreachable or too slow ({type(exc).__name__})"
            ) from None
        self.forget(events)
        return WriteResult(written=len(events))


SINK = PostHogSink
SETTINGS = PostHogSinkSettings
