"""Local fake of the RudderStack data-plane HTTP API (rudder-server gateway).

* ``POST /v1/batch`` with body ``{"batch": [...], "sentAt"?}``.
* ``POST /v1/{track,identify,page,screen,group,alias}`` with one event as body.

Auth is HTTP Basic ``writeKey:`` (empty password). Bodies may be gzip
(rudder-sdk-python gzips by default). Success is ``200 OK`` (text/plain); errors
are the gateway's plain-text messages, which rudder-sdk-python turns into
``APIError(status, "unknown", text)``.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Any

from .base import RecordedRequest, RecordingHTTPServer, Response, _norm_path, json_size

__all__ = ["RudderStackServer"]

# rudder-server gateway/response messages
OK = "OK"
NO_WRITE_KEY = "Failed to read writeKey from header"
INVALID_WRITE_KEY = "Invalid Write Key"
REQUEST_TOO_LARGE = "Request size exceeds max limit"
INVALID_JSON = "Invalid JSON"
NON_IDENTIFIABLE = "Request neither has anonymousId nor userId"
TOO_MANY_REQUESTS = "Max Requests Limit reached"
BODY_READ_FAILED = "Failed to read body from request"

_MESSAGES = {
    400: INVALID_JSON,
    401: INVALID_WRITE_KEY,
    404: "404 page not found",
    413: REQUEST_TOO_LARGE,
    429: TOO_MANY_REQUESTS,
}


class RudderStackServer(RecordingHTTPServer):
    name = "rudderstack"

    SINGLE_EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")

    def __init__(
        self,
        write_key: str = "rudder_test_write_key",
        *,
        max_request_bytes: int = 4000 * 1024,  # Gateway.maxReqSizeInKB default
        max_event_bytes: int = 32 * 1024,  # documented per-event limit
        require_identity: bool = True,  # gateway rejects events without ids
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(host=host, port=port, clock=clock)
        self.write_key = write_key
        # Limits are inclusive: exactly the limit is accepted.
        self.max_request_bytes = max_request_bytes
        self.max_event_bytes = max_event_bytes
        self.require_identity = require_identity
        self._events: list[dict] = []
        self._batches: list[dict] = []
        self._regulations: list[dict] = []

    @property
    def max_decoded_bytes(self) -> int:  # type: ignore[override]
        return self.max_request_bytes

    # -- recorded data -------------------------------------------------------------

    @property
    def events(self) -> list[dict]:
        """Accepted events exactly as sent, in arrival order."""
        with self._lock:
            return list(self._events)

    @property
    def batches(self) -> list[dict]:
        """Accepted request bodies; single-event calls appear as ``{"batch": [event]}``
        with ``path`` added."""
        with self._lock:
            return list(self._batches)

    def message_ids(self) -> list[str | None]:
        return [e.get("messageId") for e in self.events]

    def events_by_message_id(self) -> dict[str, dict]:
        return {e["messageId"]: e for e in self.events if e.get("messageId")}

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._events.clear()
            self._batches.clear()

    # -- routing -------------------------------------------------------------------

    def error_response(self, status: int, message: str | None = None) -> Response:
        return Response.text(status, message or _MESSAGES.get(status, f"HTTP {status}"))

    def request_ids(self, req: RecordedRequest) -> set[str]:
        return {str(e["messageId"]) for e in _events_of(req.json) if e.get("messageId")}

    # -- User Suppression API (control plane: personal access token as Bearer) ----

    #: Personal access token the regulation endpoint accepts.
    access_token = "rudder_test_access_token"
    REGULATION_TYPES = ("suppress", "suppress_with_delete")

    @property
    def regulations(self) -> list[dict]:
        """Accepted regulations as sent, each with the ``id`` the server gave it."""
        with self._lock:
            return list(self._regulations)

    def _handle_regulation(self, req: RecordedRequest) -> Response:
        if req.method != "POST":
            return Response.json(405, {"error": "method not allowed"})
        if (req.header("authorization") or "") != f"Bearer {self.access_token}":
            return Response.json(401, {"error": "Unauthorized"})
        body = req.json
        if not isinstance(body, dict) or body.get("regulationType") not in self.REGULATION_TYPES:
            return Response.json(
                400, {"error": "regulationType must be suppress or suppress_with_delete"}
            )
        users = body.get("users")
        if (
            not isinstance(users, list)
            or not users
            or not all(
                isinstance(u, dict) and isinstance(u.get("userId"), str) and u["userId"]
                for u in users
            )
        ):
            return Response.json(400, {"error": "users must be a non-empty list of {userId}"})
        if body["regulationType"] == "suppress_with_delete" and not body.get("destinationIds"):
            return Response.json(
                400, {"error": "destinationIds is required for suppress_with_delete"}
            )
        with self._lock:
            regulation = dict(body, id=f"reg_{len(self._regulations) + 1}")
            self._regulations.append(regulation)
        return Response.json(201, {"id": regulation["id"]})

    def handle_request(self, req: RecordedRequest) -> Response:
        path = _norm_path(req.path)
        if path == "/v2/regulations":
            return self._handle_regulation(req)
        if path == "/v1/batch":
            single = None
        elif path.startswith("/v1/") and path[4:] in self.SINGLE_EVENT_TYPES:
            single = path[4:]
        else:
            return self.error_response(404)
        if req.method != "POST":
            return self.error_response(400, "Invalid HTTP Request Method")

        auth = self._check_auth(req)
        if auth is not None:
            return auth
        if req.decode_error:
            return self.error_response(400, BODY_READ_FAILED)
        if req.body_truncated or len(req.body) > self.max_request_bytes:
            return self.error_response(413)
        body = req.json
        if not isinstance(body, dict):
            return self.error_response(400, INVALID_JSON)
        if single is None:
            events = body.get("batch")
            if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                return self.error_response(400, INVALID_JSON)
        else:
            events = [body]
        for event in events:
            if json_size(event) > self.max_event_bytes:
                return self.error_response(413)
            if self.require_identity and not (event.get("anonymousId") or event.get("userId")):
                return self.error_response(400, NON_IDENTIFIABLE)

        with self._lock:
            self._batches.append(
                dict(body, path=req.path) if single is None else {"batch": [body], "path": req.path}
            )
            self._events.extend(events)
        return Response.text(200, OK)

    def _check_auth(self, req: RecordedRequest) -> Response | None:
        header = req.header("authorization") or ""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            return self.error_response(401, NO_WRITE_KEY)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return self.error_response(401, NO_WRITE_KEY)
        write_key, _, _password = decoded.partition(":")
        if not write_key:
            return self.error_response(401, NO_WRITE_KEY)
        if write_key != self.write_key:
            return self.error_response(401, INVALID_WRITE_KEY)
        return None


def _events_of(body: Any) -> list[dict]:
    if isinstance(body, dict):
        batch = body.get("batch")
        if isinstance(batch, list):
            return [e for e in batch if isinstance(e, dict)]
        return [body]
    return []
