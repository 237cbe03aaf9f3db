"""Local fake of PostHog's ingestion and feature-flag HTTP APIs.

Endpoints (trailing slashes optional):

* ``POST /batch/`` and ``POST /i/v0/ai/batch/`` (the SDK's AI lane): legacy
  capture. Body ``{"api_key", "batch": [...], "historical_migration"?, "sent_at"?}``,
  optionally gzip. Answers ``200 {"status": 1}``.
* ``GET /flags/definitions?token=<project key>&send_cohorts`` (posthog 7.x) and
  ``GET /api/feature_flag/local_evaluation/?token=...`` (older SDKs): flag
  definitions for local evaluation, ``Authorization: Bearer <personal key>``,
  ETag / ``If-None-Match`` -> 304.
* ``POST /flags/?v=N``: remote evaluation. ``v>=4`` typed records (``value``),
  ``v=2/3`` detailed records, no/low ``v`` the legacy ``featureFlags`` shape.

Bucketing follows PostHog: ``sha1(f"{key}.{id}{salt}")``, first 15 hex digits
over ``0xFFFFFFFFFFFFFFF``; a condition's rollout includes ``hash <= pct/100``
and variants use salt ``"variant"``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import RecordedRequest, RecordingHTTPServer, Response, _norm_path, json_size

__all__ = ["PostHogServer", "FlagEvaluation", "posthog_hash"]

LONG_SCALE = float(0xFFFFFFFFFFFFFFF)

_INVALID_KEY_DETAIL = (
    "Project API key invalid. You can find your project API key in PostHog project settings."
)
_MISSING_KEY_DETAIL = (
    "API key not provided. You can find your project API key in PostHog project settings."
)


def posthog_hash(key: str, bucketing_value: Any, salt: str = "") -> float:
    """PostHog's deterministic bucket in [0, 1) for ``key`` and an id."""
    digest = hashlib.sha1(f"{key}.{bucketing_value}{salt}".encode()).hexdigest()
    return int(digest[:15], 16) / LONG_SCALE


def _ph_error(status: int, type_: str, code: str, detail: str) -> Response:
    # PostHog's Django-style error body; the SDK surfaces ``detail``.
    return Response.json(status, {"type": type_, "code": code, "detail": detail, "attr": None})


class _Unsupported(Exception):
    """A filter this fake cannot evaluate (the real server might)."""


@dataclass
class FlagEvaluation:
    key: str
    enabled: bool
    variant: str | None
    reason_code: str
    condition_index: int | None
    payload: str | None
    errored: bool = False

    @property
    def value(self) -> Any:
        return self.variant if self.variant is not None else self.enabled

    @property
    def description(self) -> str:
        if self.reason_code == "condition_match":
            return f"Matched condition set {self.condition_index + 1}"
        return {
            "no_condition_match": "No matching condition set",
            "out_of_rollout_bound": "Out of rollout bound",
            "no_group_type": "No group type",
        }.get(self.reason_code, self.reason_code)


class PostHogServer(RecordingHTTPServer):
    name = "posthog"

    BATCH_PATHS = ("/batch", "/i/v0/ai/batch")
    DEFINITIONS_PATHS = ("/flags/definitions", "/api/feature_flag/local_evaluation")
    FLAGS_PATHS = ("/flags",)

    def __init__(
        self,
        project_api_key: str = "phc_test_project_key",
        personal_api_key: str | None = "phx_test_personal_key",
        *,
        flags: list[dict] | None = None,
        group_type_mapping: Mapping[str, str] | None = None,
        cohorts: Mapping[str, Any] | None = None,
        max_body_bytes: int = 20 * 1024 * 1024,
        max_event_bytes: int = 1024 * 1024,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(host=host, port=port, clock=clock)
        self.project_api_key = project_api_key
        self.personal_api_key = personal_api_key
        # Limits are inclusive: a body/event of exactly the limit is accepted.
        self.max_body_bytes = max_body_bytes
        self.max_event_bytes = max_event_bytes
        # Set to make /flags answer quotaLimited: ["feature_flags"].
        self.flags_quota_limited = False
        self._events: list[dict] = []
        self._batches: list[dict] = []
        self._flags: list[dict] = []
        self._group_type_mapping: dict[str, str] = {}
        self._cohorts: dict[str, Any] = {}
        self._etag = ""
        self.set_flags(flags or [], group_type_mapping, cohorts)

    @property
    def max_decoded_bytes(self) -> int:  # type: ignore[override]
        return self.max_body_bytes

    # -- recorded data -------------------------------------------------------------

    @property
    def events(self) -> list[dict]:
        """Accepted events, in arrival order, each with the batch's
        ``historical_migration`` flag added (the only key the server adds)."""
        with self._lock:
            return list(self._events)

    @property
    def batches(self) -> list[dict]:
        """Accepted request bodies exactly as decoded, plus ``path``."""
        with self._lock:
            return list(self._batches)

    def uuids(self) -> list[str | None]:
        return [e.get("uuid") for e in self.events]

    def events_by_uuid(self) -> dict[str, dict]:
        return {e["uuid"]: e for e in self.events if e.get("uuid")}

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._events.clear()
            self._batches.clear()

    # -- flag definitions ----------------------------------------------------------

    def set_flags(
        self,
        flags: Iterable[dict],
        group_type_mapping: Mapping[str, str] | None = None,
        cohorts: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace the definitions (PostHog flag JSON). Mapping/cohorts are kept
        unless given. Changes the definitions ETag."""
        with self._lock:
            self._flags = copy.deepcopy(list(flags))
            if group_type_mapping is not None:
                self._group_type_mapping = {str(k): v for k, v in group_type_mapping.items()}
            if cohorts is not None:
                self._cohorts = {str(k): copy.deepcopy(v) for k, v in cohorts.items()}
            body = json.dumps(self._definitions_locked(), sort_keys=True)
            self._etag = f'"{hashlib.sha256(body.encode()).hexdigest()[:32]}"'

    @property
    def flag_definitions(self) -> dict:
        """The body served to local evaluation."""
        with self._lock:
            return copy.deepcopy(self._definitions_locked())

    @property
    def definitions_etag(self) -> str:
        with self._lock:
            return self._etag

    def _definitions_locked(self) -> dict:
        return {
            "flags": self._flags,
            "group_type_mapping": self._group_type_mapping,
            "cohorts": self._cohorts,
        }

    # -- routing -------------------------------------------------------------------

    def request_ids(self, req: RecordedRequest) -> set[str]:
        body = req.json
        if isinstance(body, dict) and isinstance(body.get("batch"), list):
            return {str(e["uuid"]) for e in body["batch"] if isinstance(e, dict) and e.get("uuid")}
        return set()

    def handle_request(self, req: RecordedRequest) -> Response:
        path = _norm_path(req.path)
        if path in self.BATCH_PATHS:
            return self._post_only(req) or self._handle_batch(req)
        if path in self.DEFINITIONS_PATHS:
            if req.method != "GET":
                return self.error_response(405)
            return self._handle_definitions(req)
        if path in self.FLAGS_PATHS:
            return self._post_only(req) or self._handle_flags(req)
        return self.error_response(404, f"Endpoint {req.path} not found")

    def _post_only(self, req: RecordedRequest) -> Response | None:
        return None if req.method == "POST" else self.error_response(405)

    def error_response(self, status: int, message: str | None = None) -> Response:
        if status == 401:
            return _ph_error(
                401,
                "authentication_error",
                "invalid_api_key",
                message or _INVALID_KEY_DETAIL,
            )
        if status == 403:
            return _ph_error(
                403,
                "authentication_error",
                "permission_denied",
                message or "You do not have permission to perform this action.",
            )
        if status == 413:
            return _ph_error(
                413, "validation_error", "payload_too_large", message or "Payload too large"
            )
        if status == 429:
            return _ph_error(
                429, "throttled_error", "throttled", message or "Request was throttled."
            )
        if status >= 500:
            return _ph_error(status, "server_error", "error", message or "A server error occurred.")
        return _ph_error(status, "validation_error", "invalid_input", message or "Invalid request.")

    def _bad(self, message: str) -> Response:
        return _ph_error(400, "validation_error", "invalid_payload", message)

    # -- /batch/ -------------------------------------------------------------------

    def _handle_batch(self, req: RecordedRequest) -> Response:
        if req.body_truncated or len(req.body) > self.max_body_bytes:
            return self.error_response(413, f"Request body larger than {self.max_body_bytes} bytes")
        if req.decode_error:
            return self._bad(f"Malformed request data: {req.decode_error}")
        body = req.json
        if not isinstance(body, dict):
            return self._bad("Malformed request data: body is not a JSON object")
        batch = body.get("batch")
        if not isinstance(batch, list):
            return self._bad("Malformed request data: missing batch")

        token = body.get("api_key") or body.get("token")
        if not token:
            first = batch[0] if batch and isinstance(batch[0], dict) else {}
            token = first.get("api_key") or (first.get("properties") or {}).get("token")
        if not token:
            return self.error_response(401, _MISSING_KEY_DETAIL)
        if token != self.project_api_key:
            return self.error_response(401)

        if not batch:
            return self._bad("request holds no event")
        for event in batch:
            if not isinstance(event, dict):
                return self._bad("batch items must be objects")
            if not event.get("event"):
                return self._bad("event submitted with an empty event name")
            distinct_id = event.get("distinct_id")
            if distinct_id in (None, ""):
                distinct_id = (event.get("properties") or {}).get("distinct_id")
            if distinct_id in (None, ""):
                return self._bad("event submitted without a distinct_id")
            size = json_size(event)
            if size > self.max_event_bytes:
                return self.error_response(
                    413,
                    f"Event {event.get('uuid')} is {size} bytes, "
                    f"over the {self.max_event_bytes} byte limit",
                )

        historical = body.get("historical_migration") is True
        with self._lock:
            self._batches.append(dict(body, path=req.path))
            for event in batch:
                self._events.append(dict(event, historical_migration=historical))
        return Response.json(200, {"status": 1})

    # -- flag definitions ----------------------------------------------------------

    def _handle_definitions(self, req: RecordedRequest) -> Response:
        auth = req.header("authorization") or ""
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return _ph_error(
                401,
                "authentication_error",
                "not_authenticated",
                "Authentication credentials were not provided.",
            )
        if self.personal_api_key is None or auth[7:].strip() != self.personal_api_key:
            return _ph_error(
                401,
                "authentication_error",
                "authentication_failed",
                "Invalid personal API key.",
            )
        if req.query.get("token") != self.project_api_key:
            return self.error_response(401)
        with self._lock:
            etag = self._etag
            body = json.dumps(self._definitions_locked())
        headers = {"ETag": etag}
        if req.header("if-none-match") == etag:
            return Response(304, b"", headers)
        return Response(200, body.encode(), {"Content-Type": "application/json", **headers})

    # -- /flags --------------------------------------------------------------------

    def _handle_flags(self, req: RecordedRequest) -> Response:
        if req.decode_error:
            return self._bad(f"Malformed request data: {req.decode_error}")
        body = req.json
        if not isinstance(body, dict):
            return self._bad("Malformed request data: body is not a JSON object")
        token = body.get("api_key") or body.get("token")
        if not token:
            return self.error_response(401, _MISSING_KEY_DETAIL)
        if token != self.project_api_key:
            return self.error_response(401)
        distinct_id = body.get("distinct_id")
        if distinct_id in (None, ""):
            return self._bad("Decide requires a distinct_id.")
        try:
            version = int(req.query.get("v") or 1)
        except ValueError:
            version = 1

        keys = body.get("flag_keys_to_evaluate")
        results = self.evaluate_flags(
            str(distinct_id),
            groups=body.get("groups") or {},
            person_properties=body.get("person_properties") or {},
            group_properties=body.get("group_properties") or {},
            device_id=body.get("device_id"),
            flag_keys=keys if isinstance(keys, list) else None,
        )
        with self._lock:
            by_key = {f.get("key"): f for f in self._flags}
        errors = any(r.errored for r in results)
        out: dict[str, Any] = {
            "errorsWhileComputingFlags": errors,
            "requestId": str(uuid.uuid4()),
        }
        if self.flags_quota_limited:
            out["quotaLimited"] = ["feature_flags"]
        if version >= 2:
            out["evaluatedAt"] = int(time.time() * 1000)
            out["flags"] = {
                r.key: self._flag_record(r, by_key.get(r.key) or {}, typed=version >= 4)
                for r in results
            }
        else:
            out["featureFlags"] = {r.key: r.value for r in results}
            out["featureFlagPayloads"] = {
                r.key: r.payload for r in results if r.enabled and r.payload is not None
            }
        return Response.json(200, out)

    @staticmethod
    def _flag_record(result: FlagEvaluation, flag: dict, typed: bool) -> dict:
        metadata: dict[str, Any] = {
            "id": flag.get("id"),
            "version": flag.get("version"),
            "description": flag.get("name") or None,
            "payload": result.payload if result.enabled else None,
        }
        record: dict[str, Any] = {
            "key": result.key,
            "enabled": result.enabled,
            "variant": result.variant,
            "reason": {
                "code": result.reason_code,
                "condition_index": result.condition_index,
                "description": result.description,
            },
            "metadata": metadata,
        }
        if typed:
            # v4 records carry the typed value; config_version 1 = bool/variant flags.
            record["value"] = result.value
            metadata["config_version"] = 1
            if result.variant is not None:
                metadata["variant_key"] = result.variant
        return record

    # -- evaluation ----------------------------------------------------------------

    def evaluate_flags(
        self,
        distinct_id: str,
        *,
        groups: Mapping[str, Any] | None = None,
        person_properties: Mapping[str, Any] | None = None,
        group_properties: Mapping[str, Mapping[str, Any]] | None = None,
        device_id: str | None = None,
        flag_keys: list[str] | None = None,
    ) -> list[FlagEvaluation]:
        """Evaluate active flags the way ``/flags`` does."""
        with self._lock:
            flags = copy.deepcopy(self._flags)
            mapping = dict(self._group_type_mapping)
            cohorts = copy.deepcopy(self._cohorts)
        results = []
        for flag in flags:
            if not flag.get("active", True) or flag.get("deleted"):
                continue  # PostHog leaves inactive flags out of /flags entirely
            if flag_keys is not None and flag.get("key") not in flag_keys:
                continue
            results.append(
                self._evaluate(
                    flag,
                    distinct_id,
                    groups or {},
                    person_properties or {},
                    group_properties or {},
                    device_id,
                    mapping,
                    cohorts,
                )
            )
        return results

    def evaluate_flag(self, key: str, distinct_id: str, **kwargs: Any) -> FlagEvaluation | None:
        found = self.evaluate_flags(distinct_id, flag_keys=[key], **kwargs)
        return found[0] if found else None

    def _evaluate(
        self,
        flag: dict,
        distinct_id: str,
        groups: Mapping[str, Any],
        person_properties: Mapping[str, Any],
        group_properties: Mapping[str, Mapping[str, Any]],
        device_id: str | None,
        mapping: Mapping[str, str],
        cohorts: Mapping[str, Any],
    ) -> FlagEvaluation:
        key = flag["key"]
        filters = flag.get("filters") or {}
        aggregation = filters.get("aggregation_group_type_index")
        if aggregation is not None:
            group_type = mapping.get(str(aggregation))
            if group_type is None or group_type not in groups:
                return FlagEvaluation(key, False, None, "no_group_type", None, None)
            group_key = groups[group_type]
            bucketing = str(group_key)
            properties = {
                "$group_key": group_key,
                **(group_properties.get(group_type) or {}),
            }
        else:
            bucketing_id = flag.get("bucketing_identifier") or filters.get("bucketing_identifier")
            bucketing = device_id if bucketing_id == "device_id" and device_id else distinct_id
            properties = {"distinct_id": distinct_id, **person_properties}

        variants = ((filters.get("multivariate") or {}).get("variants")) or []
        variant_keys = [v["key"] for v in variants]
        miss_code, miss_index, errored = "no_condition_match", None, False
        for index, condition in enumerate(filters.get("groups") or []):
            try:
                props_ok = all(
                    self._match_filter(p, properties, cohorts)
                    for p in condition.get("properties") or []
                )
            except _Unsupported:
                errored = True
                continue
            if not props_ok:
                continue
            rollout = condition.get("rollout_percentage")
            if rollout is not None and posthog_hash(key, bucketing) > rollout / 100:
                if miss_code == "no_condition_match":
                    miss_code, miss_index = "out_of_rollout_bound", index
                continue
            variant = None
            if variants:
                override = condition.get("variant")
                variant = (
                    override
                    if override in variant_keys
                    else self._variant(key, bucketing, variants)
                )
            payloads = filters.get("payloads") or {}
            payload = payloads.get(variant if variant is not None else "true")
            if payload is not None and not isinstance(payload, str):
                payload = json.dumps(payload)
            return FlagEvaluation(key, True, variant, "condition_match", index, payload, errored)
        return FlagEvaluation(key, False, None, miss_code, miss_index, None, errored)

    @staticmethod
    def _variant(key: str, bucketing: str, variants: list[dict]) -> str | None:
        bucket = posthog_hash(key, bucketing, salt="variant")
        low = 0.0
        for variant in variants:
            high = low + variant["rollout_percentage"] / 100
            if low <= bucket < high:
                return variant["key"]
            low = high
        return None

    def _match_filter(
        self, prop: dict, values: Mapping[str, Any], cohorts: Mapping[str, Any]
    ) -> bool:
        kind = prop.get("type")
        if kind == "cohort":
            cohort = cohorts.get(str(prop.get("value")))
            if cohort is None:
                raise _Unsupported(f"unknown cohort {prop.get('value')}")
            matched = self._match_group(cohort, values, cohorts)
            return not matched if prop.get("negation") else matched
        if kind == "flag":
            raise _Unsupported("flag dependencies are not evaluated by this fake")
        matched = _match_property(prop, values)
        return not matched if prop.get("negation") else matched

    def _match_group(
        self, group: Any, values: Mapping[str, Any], cohorts: Mapping[str, Any]
    ) -> bool:
        # Cohort definitions: {"properties": {"type": "AND"|"OR", "values": [...]}} or
        # the inner group itself; values are nested groups or property filters.
        if isinstance(group, dict) and "properties" in group and "values" not in group:
            group = group["properties"]
        items = group.get("values") or []
        results = (
            self._match_group(v, values, cohorts)
            if isinstance(v, dict) and "values" in v
            else self._match_filter(v, values, cohorts)
            for v in items
        )
        return all(results) if group.get("type", "AND") == "AND" else any(results)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _match_property(prop: dict, values: Mapping[str, Any]) -> bool:
    key = prop.get("key")
    operator = prop.get("operator") or "exact"
    expected = prop.get("value")
    if operator == "is_set":
        return key in values and values[key] is not None
    if operator == "is_not_set":
        return key not in values or values[key] is None
    if key not in values:
        return False
    actual = values[key]
    if operator in ("exact", "is_not"):
        candidates = expected if isinstance(expected, list) else [expected]
        hit = any(_as_text(c).lower() == _as_text(actual).lower() for c in candidates)
        return hit if operator == "exact" else not hit
    if actual is None:
        return False
    if operator in ("icontains", "not_icontains"):
        hit = _as_text(expected).lower() in _as_text(actual).lower()
        return hit if operator == "icontains" else not hit
    if operator in ("regex", "not_regex"):
        try:
            hit = re.search(str(expected), _as_text(actual)) is not None
        except re.error:
            return False
        return hit if operator == "regex" else not hit
    if operator in ("gt", "gte", "lt", "lte"):
        try:
            a, e = float(actual), float(expected)
        except (TypeError, ValueError):
            return False
        return {"gt": a > e, "gte": a >= e, "lt": a < e, "lte": a <= e}[operator]
    raise _Unsupported(f"operator {operator!r}")
