"""The suppression list: keyed hashes of forgotten people's ids, and the erasure audit.

``etl forget`` adds ids here (only as HMAC-SHA256 hashes, keyed with
``erasure.hmac_secret`` or else ``redaction.hmac_secret``); the normalize
stage and every sink stage check each event's ``distinct_id``, ``user_id``
and ``anonymous_id`` against it, so later events and replays of a forgotten
person are dropped (or anonymised) before anything is written.

The state is one SQLite file (``erasure.state_path``), shared by the tool
and the workers; a worker re-reads it at most every
``erasure.reload_interval`` seconds.  The audit tables live beside it:
``erasure_requests`` (one row per forget) and ``erasure_outcomes`` (one row
per request and destination, so a re-run resumes where one failed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sqlite3
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from etl.config import CoreSettings

log = logging.getLogger("etl.suppression")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS suppressed ("
    " id_hash TEXT PRIMARY KEY, request_id TEXT NOT NULL, added_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS erasure_requests ("
    " request_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, id_hashes TEXT NOT NULL,"
    " destinations TEXT NOT NULL, status TEXT NOT NULL, finished_at TEXT)",
    "CREATE TABLE IF NOT EXISTS erasure_outcomes ("
    " request_id TEXT NOT NULL, destination TEXT NOT NULL, status TEXT NOT NULL,"
    " rows_deleted INTEGER, detail TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
    " updated_at TEXT NOT NULL, PRIMARY KEY (request_id, destination))",
)


def erasure_key(settings: CoreSettings) -> bytes | None:
    secret = settings.erasure.hmac_secret or settings.redaction.hmac_secret
    return secret.get_secret_value().encode() if secret is not None else None


def id_hash(key: bytes, value: str) -> str:
    return hmac.new(key, b"etl-erasure\x00" + value.encode("utf-8"), hashlib.sha256).hexdigest()


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    con.execute("PRAGMA busy_timeout = 30000")
    for ddl in SCHEMA:
        con.execute(ddl)
    return con


class SuppressionList:
    """The hashes a process checks events against, refreshed from the state file."""

    def __init__(self, settings: CoreSettings) -> None:
        self.path = Path(settings.erasure.state_path)
        self.key = erasure_key(settings)
        self.mode = settings.erasure.suppressed_mode
        self.interval = settings.erasure.reload_interval
        self.hashes: frozenset[str] = frozenset()
        self._seen = -1
        self._next = 0.0
        self._warned = False
        key = self.key or b""  # unused without a key: is_suppressed returns first
        # The same people send event after event: hash each id once.
        self._hashed = lru_cache(maxsize=65536)(lambda value: id_hash(key, value))

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        if not self.path.exists():
            return  # nobody was ever forgotten here
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            try:
                (count,) = con.execute("SELECT count(*) FROM suppressed").fetchone()
                if count != self._seen:
                    rows = con.execute("SELECT id_hash FROM suppressed").fetchall()
                    self.hashes = frozenset(r[0] for r in rows)
                    self._seen = count
            finally:
                con.close()
        except sqlite3.Error as exc:
            # Keep the last list (it only grows); try again next interval.
            log.warning("suppression list %s unreadable: %s", self.path, exc)
        if self.hashes and self.key is None and not self._warned:
            self._warned = True
            log.error(
                "suppression list has entries but no key is set (ETL_ERASURE__HMAC_SECRET or "
                "ETL_REDACTION__HMAC_SECRET): forgotten people cannot be recognised"
            )

    def is_suppressed(self, event: dict[str, Any]) -> bool:
        key = self.key
        if key is None or not self.hashes:
            return False
        hashed = self._hashed
        for field in ("distinct_id", "user_id", "anonymous_id"):
            value = event.get(field)
            if isinstance(value, str) and hashed(value) in self.hashes:
                return True
        return False

    def anonymise(self, event: dict[str, Any]) -> None:
        """Replace the person's ids by a hash and remove what describes them (traits, $set)."""
        assert self.key is not None
        pseudo = "forgotten_" + id_hash(self.key, event["distinct_id"])[:32]
        event["distinct_id"] = pseudo
        event["user_id"] = None
        event["anonymous_id"] = pseudo
        context = event.get("context") or {}
        for k in ("traits", "ip", "device"):
            context.pop(k, None)
        props = event.get("properties") or {}
        for k in ("$set", "$set_once", "$ip", "$anon_distinct_id", "$device_id", "email"):
            props.pop(k, None)
        context["etl"] = {**(context.get("etl") or {}), "anonymised": True}
        event["context"] = context

    def filter(self, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """The events to keep (anonymised in place if configured), and how many were suppressed."""
        self.refresh()
        if not self.hashes or self.key is None:
            return events, 0
        kept: list[dict[str, Any]] = []
        suppressed = 0
        for ev in events:
            if self.is_suppressed(ev):
                suppressed += 1
                if self.mode == "drop":
                    continue
                self.anonymise(ev)
            kept.append(ev)
        return kept, suppressed


def add(con: sqlite3.Connection, hashes: Iterable[str], request_id: str, when: str) -> None:
    con.executemany(
        "INSERT OR IGNORE INTO suppressed (id_hash, request_id, added_at) VALUES (?, ?, ?)",
        [(h, request_id, when) for h in hashes],
    )


_RAW_ID_FIELDS = ("distinct_id", "userId", "anonymousId", "user_id", "anonymous_id")


def raw_ids(raw: bytes) -> list[str]:
    """The person ids a raw payload (one event, or a batch) names, for dead letters."""
    import orjson

    try:
        doc = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return []
    items = doc.get("batch") if isinstance(doc, dict) and "batch" in doc else [doc]
    out: list[str] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            out += [v for f in _RAW_ID_FIELDS if isinstance(v := item.get(f), str)]
            props = item.get("properties")
            if isinstance(props, dict) and isinstance(props.get("distinct_id"), str):
                out.append(props["distinct_id"])
    return out


def rejection_suppressed(suppression: SuppressionList, raw: bytes) -> bool:
    key = suppression.key
    if key is None or not suppression.hashes:
        return False
    return any(id_hash(key, v) in suppression.hashes for v in raw_ids(raw))
