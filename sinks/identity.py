"""The identity layer: ``users`` (latest traits per user) and ``aliases`` (id -> user).

Both are derived from identify and alias calls in a batch plus the rows the
warehouse already holds, with merges that are commutative and idempotent:

* a user's traits are a last-writer-wins map: each trait keeps the value of the
  identify call with the greatest (event time, message_id), recorded in
  ``trait_versions``; so calls may arrive in any order, twice, or again on
  replay, and the row comes out the same;
* an alias keeps the link made by the call with the greatest (event time,
  message_id).

A warehouse reads the current rows for the batch's keys, calls :func:`merge_users`
/ :func:`merge_aliases`, and upserts the rows returned (only those that changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        ts = value
    else:
        ts = datetime.fromisoformat(str(value))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # warehouses hold UTC
    return ts.astimezone(UTC)


def _text(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: Any) -> Any:
    """A JSON column read back: text (DuckDB, Snowflake) or already decoded (BigQuery)."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        return orjson.loads(value)
    return value


@dataclass(frozen=True, slots=True)
class Call:
    """One identify or alias call, ordered by (event time, message_id)."""

    time: datetime
    message_id: str

    @property
    def version(self) -> tuple[datetime, str]:
        return (self.time, self.message_id)


def user_keys(events: list[dict[str, Any]]) -> list[str]:
    return sorted({ev["user_id"] for ev in events if _is_identify(ev)})


def alias_keys(events: list[dict[str, Any]]) -> list[str]:
    return sorted({link[0] for ev in events if (link := _alias_link(ev)) is not None})


def _is_identify(ev: dict[str, Any]) -> bool:
    return ev.get("type") == "identify" and bool(ev.get("user_id"))


def _alias_link(ev: dict[str, Any]) -> tuple[str, str, str] | None:
    """(previous_id, user_id, source) for a call that links two ids."""
    user = ev.get("user_id")
    if not user:
        return None
    if ev.get("type") == "identify":
        anon = ev.get("anonymous_id")
        if anon and anon != user:
            return (str(anon), str(user), "identify")
        return None
    if ev.get("type") == "alias":
        props = ev.get("properties") or {}
        # Segment: previousId; PostHog $create_alias: properties.alias.
        previous = props.get("previous_id", props.get("alias"))
        if isinstance(previous, str | int) and str(previous) and str(previous) != user:
            return (str(previous), str(user), "alias")
    return None


def merge_users(
    events: list[dict[str, Any]], existing: list[dict[str, Any]], loaded_at: datetime
) -> list[dict[str, Any]]:
    """``users`` rows to upsert: the existing rows merged with this batch's identify calls."""
    current = {row["user_id"]: row for row in existing}
    state: dict[str, dict[str, Any]] = {}
    for user_id, row in current.items():
        versions = {
            k: (_time(v[0]), str(v[1])) for k, v in (_json(row.get("trait_versions")) or {}).items()
        }
        state[user_id] = {
            "traits": dict(_json(row.get("traits")) or {}),
            "versions": versions,
            "first": _time(row["first_identified_at"]),
            "last": (_time(row["last_identified_at"]), str(row["last_message_id"])),
            "workspace_id": row.get("workspace_id"),
            "changed": False,
        }
    for ev in events:
        if not _is_identify(ev):
            continue
        call = Call(_time(ev["timestamp"]), str(ev["message_id"]))
        user_id = str(ev["user_id"])
        s = state.get(user_id)
        if s is None:
            s = state[user_id] = {
                "traits": {},
                "versions": {},
                "first": call.time,
                "last": call.version,
                "workspace_id": ev.get("workspace_id"),
                "changed": True,
            }
        before = (dict(s["traits"]), dict(s["versions"]), s["first"], s["last"], s["workspace_id"])
        traits = (ev.get("context") or {}).get("traits") or {}
        for key, value in traits.items():
            held = s["versions"].get(key)
            if held is None or call.version > held:
                s["traits"][key] = value
                s["versions"][key] = call.version
        s["first"] = min(s["first"], call.time)
        if call.version > s["last"]:
            # The workspace is the latest call's: a function of the maximum, so order-free.
            s["last"] = call.version
            s["workspace_id"] = ev.get("workspace_id")
        after = (s["traits"], s["versions"], s["first"], s["last"], s["workspace_id"])
        s["changed"] = s["changed"] or before != after
    rows = []
    for user_id, s in sorted(state.items()):
        if not s["changed"]:
            continue
        recorded: dict[str, list[str]] = {
            k: [_text(t), m] for k, (t, m) in sorted(s["versions"].items())
        }
        rows.append(
            {
                "user_id": user_id,
                "traits": s["traits"],
                "workspace_id": s["workspace_id"],
                "first_identified_at": _text(s["first"]),
                "last_identified_at": _text(s["last"][0]),
                "last_message_id": s["last"][1],
                "trait_versions": recorded,
                "loaded_at": _text(loaded_at),
            }
        )
    return rows


def merge_aliases(
    events: list[dict[str, Any]], existing: list[dict[str, Any]], loaded_at: datetime
) -> list[dict[str, Any]]:
    """``aliases`` rows to upsert: for each id, the link of the latest call that made one."""
    best: dict[str, tuple[tuple[datetime, str], str, str]] = {}
    for row in existing:
        version = (_time(row["timestamp"]), str(row["message_id"]))
        best[row["previous_id"]] = (version, row["user_id"], row["source"])
    kept = dict(best)
    for ev in events:
        link = _alias_link(ev)
        if link is None:
            continue
        previous, user, source = link
        version = (_time(ev["timestamp"]), str(ev["message_id"]))
        held = best.get(previous)
        if held is None or version > held[0]:
            best[previous] = (version, user, source)
    return [
        {
            "previous_id": previous,
            "user_id": user,
            "source": source,
            "message_id": version[1],
            "timestamp": _text(version[0]),
            "loaded_at": _text(loaded_at),
        }
        for previous, (version, user, source) in sorted(best.items())
        if kept.get(previous) != (version, user, source)
    ]
