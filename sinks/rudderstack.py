"""RudderStack: ``POST {data plane}/v1/batch`` with HTTP Basic auth ``writeKey:``.

Each unified event becomes a Segment-spec message: ``messageId`` =
``message_id`` (RudderStack deduplicates on it, so redelivery is harmless),
``type``, ``event`` (track only), ``userId``/``anonymousId``, ``context``,
``properties`` (``traits`` for identify and group), ``timestamp`` (UTC,
skew-corrected), ``originalTimestamp``, ``sentAt`` and ``receivedAt`` as the
source stated them.  Events are encoded once (compact UTF-8 JSON, the size the
data plane measures) and the request body is assembled from those bytes.
"""

from __future__ import annotations

import gzip
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
import requests
from pydantic import Field, SecretStr
from requests.adapters import HTTPAdapter

from etl.config import SinkSection
from sinks.base import Capabilities, RetryableSinkError, WriteResult
from sinks.http import (
    TRANSIENT_ERRORS,
    HttpSink,
    iso,
    now_iso,
    parse_retry_after,
    raise_for_refusal,
)

if TYPE_CHECKING:
    from sinks.settings import Settings

log = logging.getLogger("etl.sinks.rudderstack")

#: '{"batch":[' + '],"sentAt":"2026-11-24T01:02:03.456Z"}' plus headroom.
ENVELOPE_BYTES = 64
USER_AGENT = "analytics-etl/0.1 (+rudderstack sink)"


class RudderStackSettings(SinkSection):
    vendor_env: ClassVar[dict[str, str]] = {
        "RUDDERSTACK_WRITE_KEY": "write_key",
        "RUDDERSTACK_DATA_PLANE_URL": "data_plane_url",
    }
    required: ClassVar[tuple[str, ...]] = ("write_key", "data_plane_url")

    write_key: SecretStr | None = Field(None, description="Source write key.")
    data_plane_url: str | None = Field(None, description="Data plane URL.")
    gzip: bool = Field(True, description="Gzip request bodies.")
    timeout: float = Field(
        15.0, gt=0, description="Seconds per /v1/batch request; a timeout is retried."
    )
    # rudder-server's gateway default (Gateway.maxReqSizeInKB = 4000), a little under 4 MiB.
    max_request_bytes: int = Field(
        4000 * 1024, ge=1024, description="Largest request body (gateway default 4000 KB)."
    )
    max_event_bytes: int = Field(
        32 * 1024, ge=256, description="Largest event; bigger ones are truncated to fit."
    )
    max_batch_events: int = Field(500, ge=1, description="Most events per request.")


class RudderStackSink(HttpSink):
    name = "rudderstack"
    separator_bytes = 1

    @classmethod
    def declare_capabilities(cls, settings: Settings) -> Capabilities:
        rs = settings.rudderstack
        return Capabilities(
            max_batch_events=rs.max_batch_events,
            max_batch_bytes=rs.max_request_bytes - ENVELOPE_BYTES,
            max_event_bytes=rs.max_event_bytes,
        )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        rs = settings.rudderstack
        if rs.write_key is None or not rs.data_plane_url:
            raise ValueError(
                "sink 'rudderstack' needs rudderstack.write_key and rudderstack.data_plane_url"
            )
        self._auth = (rs.write_key.get_secret_value(), "")
        self.url = rs.data_plane_url.rstrip("/") + "/v1/batch"
        self.gzip = rs.gzip
        self.timeout = rs.timeout
        self._session: requests.Session | None = None

    def open(self) -> None:
        self._client()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _client(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            # No hidden retries: the runtime owns retry and back-off.
            adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=2)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._session = session
        return self._session

    # -------------------------------------------------------------- mapping
    def to_payload(self, event: dict[str, Any]) -> dict[str, Any]:
        etype = event.get("type") or "track"
        props = event.get("properties") or {}
        context = dict(event.get("context") or {})
        workspace = event.get("workspace_id")
        out: dict[str, Any] = {"messageId": event["message_id"], "type": etype}
        if etype == "track":
            out["event"] = event["event"]
        user_id, anonymous_id = event.get("user_id"), event.get("anonymous_id")
        if user_id:
            out["userId"] = user_id
        if anonymous_id:
            out["anonymousId"] = anonymous_id
        if not user_id and not anonymous_id:
            out["anonymousId"] = event["distinct_id"]
        if etype in ("identify", "group"):
            traits = context.pop("traits", None)
            out["traits"] = traits if isinstance(traits, dict) else {}
            if etype == "group" and workspace:
                out["groupId"] = workspace
            if props:
                out["properties"] = props
        else:
            out["properties"] = props
            if etype in ("page", "screen") and isinstance(props.get("name"), str):
                out["name"] = props["name"]
            if etype == "alias" and isinstance(props.get("previous_id"), str):
                out["previousId"] = props["previous_id"]
        if workspace and "groupId" not in context:
            context["groupId"] = workspace
        out["context"] = context
        out["timestamp"] = iso(event["timestamp"])
        for source, target in (
            ("original_timestamp", "originalTimestamp"),
            ("sent_at", "sentAt"),
            ("received_at", "receivedAt"),
        ):
            if event.get(source) is not None:
                out[target] = iso(event[source])
        return out

    def encode(self, payload: dict[str, Any]) -> bytes:
        return orjson.dumps(payload)

    # ---------------------------------------------------------------- write
    def write(self, events: list[dict[str, Any]]) -> WriteResult:
        body = (
            b'{"batch":['
            + b",".join(self.prepare(ev)[0] for ev in events)
            + b'],"sentAt":"'
            + now_iso().encode()
            + b'"}'
        )
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.gzip:
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        try:
            res = self._client().post(
                self.url, data=body, headers=headers, auth=self._auth, timeout=self.timeout
            )
        except TRANSIENT_ERRORS as exc:
            # A dead pooled connection must not be reused for the retry.
            self.close()
            raise RetryableSinkError(
                f"RudderStack unreachable or too slow ({type(exc).__name__})"
            ) from None
        if 200 <= res.status_code < 300:
            self.forget(events)
            return WriteResult(written=len(events))
        result = raise_for_refusal(
            "RudderStack",
            res.status_code,
            res.text,
            parse_retry_after(res.headers.get("Retry-After")),
            events,
        )
        self.forget(events)
        return result


SINK = RudderStackSink
SETTINGS = RudderStackSettings
