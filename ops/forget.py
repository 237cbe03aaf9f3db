"""``etl forget``: erase people from every enabled destination, and keep them out.

Order matters, and every step is safe to repeat:

1. The given ids are hashed (HMAC-SHA256, ``erasure.hmac_secret`` else
   ``redaction.hmac_secret``) and added to the suppression list first, so
   nothing the workers process from now on lands for them again.
2. The ids are widened with the ids linked to them in each warehouse (the
   ``aliases`` table where one exists, and a user's anonymous ids), and
   those are suppressed too.
3. Each destination is erased: warehouses delete the people's rows in
   ``events``, the typed tables, ``users``, ``aliases`` and
   ``rejected_events``; PostHog gets a person bulk deletion (events too);
   RudderStack a User Suppression API regulation.
4. Every destination's outcome is recorded in ``erasure_outcomes`` under the
   request id (a hash of the ids), so a re-run after a failure or a kill
   skips what is done and finishes the rest.

The audit (``erasure_requests``, ``erasure_outcomes``) holds ids only as
keyed hashes.  Not erased: the raw Kafka topics, until their retention ends
(a replay of them is suppressed instead).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from mappers.suppression import add as add_suppressed
from mappers.suppression import connect, erasure_key, id_hash
from sinks.base import RetryableSinkError
from sinks.registry import build_sink
from sinks.settings import Settings

log = logging.getLogger("etl.forget")

#: Largest batch of ids per vendor request (PostHog's bulk delete takes 1000).
VENDOR_BATCH = 1000
#: How long a warehouse delete waits for a worker to release the DuckDB file.
LOCK_WAIT_SECONDS = 120.0


class ForgetError(Exception):
    """A configuration problem found before anything is erased (exit 2)."""


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def destinations(settings: Settings) -> list[str]:
    return [name for name in settings.sinks if name in ERASERS]


def preflight(settings: Settings) -> bytes:
    """The hashing key; every enabled destination's erasure settings present."""
    key = erasure_key(settings)
    if key is None:
        raise ForgetError(
            "erasure.hmac_secret is not set (ETL_ERASURE__HMAC_SECRET, or "
            "ETL_REDACTION__HMAC_SECRET): ids are stored only as keyed hashes"
        )
    e = settings.erasure
    if "posthog" in settings.sinks:
        if settings.posthog.personal_api_key is None:
            raise ForgetError(
                "posthog.personal_api_key is not set (ETL_POSTHOG__PERSONAL_API_KEY): "
                "PostHog person deletion needs it"
            )
        if not e.posthog_project_id:
            raise ForgetError(
                "erasure.posthog_project_id is not set (ETL_ERASURE__POSTHOG_PROJECT_ID)"
            )
    if "rudderstack" in settings.sinks:
        if e.rudderstack_access_token is None:
            raise ForgetError(
                "erasure.rudderstack_access_token is not set "
                "(ETL_ERASURE__RUDDERSTACK_ACCESS_TOKEN)"
            )
        if e.rudderstack_regulation == "suppress_with_delete" and not e.rudderstack_destination_ids:
            raise ForgetError(
                "erasure.rudderstack_destination_ids is not set "
                "(ETL_ERASURE__RUDDERSTACK_DESTINATION_IDS): suppress_with_delete names them"
            )
    return key


# ------------------------------------------------------------------ erasers
def _with_lock_retry(fn: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            return fn()
        except RetryableSinkError as exc:
            if time.monotonic() > deadline:
                raise
            time.sleep(min(exc.retry_after or 0.5, 2.0))


def _warehouse_eraser(name: str) -> Callable[[Settings, set[str]], tuple[int, dict[str, Any]]]:
    def erase(settings: Settings, ids: set[str]) -> tuple[int, dict[str, Any]]:
        sink = build_sink(settings, name)
        try:
            counts = _with_lock_retry(lambda: sink.delete_people(ids))
        finally:
            sink.close()
        return sum(counts.values()), {"tables": counts}

    return erase


def _posthog(settings: Settings, ids: set[str]) -> tuple[int, dict[str, Any]]:
    import requests  # installed with the vendor extras, like the sinks that need it

    e = settings.erasure
    host = settings.posthog.host.rstrip("/")
    url = f"{host}/api/projects/{e.posthog_project_id}/persons/bulk_delete/"
    assert settings.posthog.personal_api_key is not None
    headers = {"Authorization": f"Bearer {settings.posthog.personal_api_key.get_secret_value()}"}
    found = 0
    ordered = sorted(ids)
    for start in range(0, len(ordered), VENDOR_BATCH):
        chunk = ordered[start : start + VENDOR_BATCH]
        resp = requests.post(
            url,
            json={"distinct_ids": chunk, "delete_events": True},
            headers=headers,
            timeout=e.timeout,
        )
        if resp.status_code >= 300:
            raise RuntimeError(f"PostHog bulk_delete answered HTTP {resp.status_code}")
        doc = resp.json() if resp.content else {}
        found += int(doc.get("persons_found") or 0)
    return found, {"persons_found": found, "requests": -(-len(ordered) // VENDOR_BATCH)}


def _rudderstack(settings: Settings, ids: set[str]) -> tuple[int, dict[str, Any]]:
    import requests

    e = settings.erasure
    assert e.rudderstack_access_token is not None
    url = f"{e.rudderstack_api_url.rstrip('/')}/v2/regulations"
    headers = {"Authorization": f"Bearer {e.rudderstack_access_token.get_secret_value()}"}
    body: dict[str, Any] = {
        "regulationType": e.rudderstack_regulation,
        "users": [{"userId": i} for i in sorted(ids)],
    }
    if e.rudderstack_destination_ids:
        body["destinationIds"] = list(e.rudderstack_destination_ids)
    resp = requests.post(url, json=body, headers=headers, timeout=e.timeout)
    if resp.status_code >= 300:
        raise RuntimeError(f"RudderStack regulations answered HTTP {resp.status_code}")
    regulation = (resp.json() if resp.content else {}).get("id")
    return 0, {"regulation_id": regulation, "regulation_type": e.rudderstack_regulation}


ERASERS: dict[str, Callable[[Settings, set[str]], tuple[int, dict[str, Any]]]] = {
    "duckdb": _warehouse_eraser("duckdb"),
    "snowflake": _warehouse_eraser("snowflake"),
    "bigquery": _warehouse_eraser("bigquery"),
    "posthog": _posthog,
    "rudderstack": _rudderstack,
}
WAREHOUSES = ("duckdb", "snowflake", "bigquery")


# -------------------------------------------------------------------- forget
def request_id_for(hashes: list[str]) -> str:
    """Same ids, same request: a re-run resumes the one before."""
    return "fgt_" + hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:24]


def forget(settings: Settings, distinct_ids: list[str]) -> dict[str, Any]:
    ids = {i for i in distinct_ids if i}
    if not ids:
        raise ForgetError("--distinct-id: give at least one non-empty id")
    key = preflight(settings)
    targets = destinations(settings)
    given = sorted(id_hash(key, i) for i in ids)
    request_id = request_id_for(given)
    con = connect(settings.erasure.state_path)
    try:
        con.execute(
            "INSERT OR IGNORE INTO erasure_requests (request_id, created_at, id_hashes, "
            "destinations, status) VALUES (?, ?, ?, ?, 'running')",
            [request_id, _now(), orjson.dumps(given).decode(), orjson.dumps(targets).decode()],
        )
        # Suppress first: from here on the pipeline lets nothing of theirs land.
        add_suppressed(con, given, request_id, _now())

        everyone = set(ids)
        for name in targets:
            if name in WAREHOUSES:
                sink = build_sink(settings, name)
                try:
                    everyone |= _with_lock_retry(
                        lambda s=sink, known=set(everyone): s.person_ids(known)
                    )
                except Exception as exc:  # noqa: BLE001 - recorded; the delete step retries it
                    log.warning(
                        "forget: %s: could not follow aliases (%s)", name, type(exc).__name__
                    )
                finally:
                    sink.close()
        add_suppressed(con, (id_hash(key, i) for i in everyone), request_id, _now())

        done = {
            row[0]: row
            for row in con.execute(
                "SELECT destination, status, rows_deleted, detail FROM erasure_outcomes "
                "WHERE request_id = ?",
                [request_id],
            ).fetchall()
        }
        outcomes: dict[str, dict[str, Any]] = {}
        for name in targets:
            prior = done.get(name)
            if prior is not None and prior[1] == "done":
                outcomes[name] = {
                    "status": "done",
                    "rows_deleted": prior[2],
                    "detail": orjson.loads(prior[3]) if prior[3] else {},
                    "skipped": True,
                }
                continue
            try:
                rows, detail = ERASERS[name](settings, everyone)
                status = "done"
            except Exception as exc:  # noqa: BLE001 - one destination's failure is recorded
                rows, detail, status = (
                    None,
                    {"error": f"{type(exc).__name__}: {exc}"[:300]},
                    "failed",
                )
            con.execute(
                "INSERT INTO erasure_outcomes (request_id, destination, status, rows_deleted, "
                "detail, attempts, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?) "
                "ON CONFLICT (request_id, destination) DO UPDATE SET status = excluded.status, "
                "rows_deleted = excluded.rows_deleted, detail = excluded.detail, "
                "attempts = erasure_outcomes.attempts + 1, updated_at = excluded.updated_at",
                [request_id, name, status, rows, orjson.dumps(detail).decode(), _now()],
            )
            outcomes[name] = {"status": status, "rows_deleted": rows, "detail": detail}
        complete = all(o["status"] == "done" for o in outcomes.values())
        con.execute(
            "UPDATE erasure_requests SET status = ?, finished_at = ? WHERE request_id = ?",
            ["complete" if complete else "partial", _now(), request_id],
        )
    finally:
        con.close()
    return {
        "request_id": request_id,
        "status": "complete" if complete else "partial",
        "ids": len(ids),
        "linked_ids": len(everyone) - len(ids),
        "suppressed": True,
        "destinations": outcomes,
        "rows_deleted": sum(o["rows_deleted"] or 0 for n, o in outcomes.items() if n in WAREHOUSES),
    }
