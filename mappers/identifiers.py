"""Identifiers: the one rule for table and column names, and the ``message_id`` rule.

**Table and column names** built from event data:

* lower snake_case over ``[a-z0-9_]`` (camelCase is split, anything else becomes ``_``);
* a leading digit gets a ``_`` prefix;
* a reserved word gets a ``_`` suffix (``select`` -> ``select_``);
* a name longer than the warehouse's limit is cut and ends in ``_`` + 8 hex
  characters of a hash of the *original* name, so two long names that share a
  prefix stay distinct and the mapping is stable across runs and workers.

Warehouses declare their limit as a sink capability; the rule itself never
branches on a warehouse name.

**message_id**: the source's ``uuid`` (PostHog) or ``messageId`` (Segment)
exactly as given; otherwise a UUID-formatted SHA-256 of the event's canonical
content without its transport fields, so a replay or a client's re-send of
the same event yields the same id.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from functools import lru_cache
from typing import Any

import orjson

from mappers.errors import EventRejected, Reason
from mappers.jsontypes import json_type

# Words that are reserved (or awkward) in DuckDB, Snowflake, BigQuery or ANSI
# SQL.  Kept deliberately broad: a spurious suffix is harmless, a missing one
# breaks DDL in some warehouse.
RESERVED_WORDS: frozenset[str] = frozenset(
    """
    all alter analyse analyze and any array as asc assert_rows_modified at
    authorization between both by case cast check collate column constraint
    create cross cube current current_catalog current_date current_role
    current_schema current_time current_timestamp current_user default
    deferrable define delete desc describe distinct do drop else end enum escape
    except exclude exists extract false fetch following for foreign from full
    function grant group grouping groups having hash ignore ilike illegal in
    increment initially inner insert intersect interval into is isnull join
    lateral leading left like limit localtime localtimestamp lookup merge
    minus natural new no not notnull null nulls of offset on only or order
    outer over partition pivot placing preceding primary qualify range recursive
    references regexp respect returning right rlike rollup row rows sample
    select session_user set similar some start struct symmetric table
    tablesample then to trailing treat true try_cast union unique unnest
    unpivot update user using values variadic verbose when whenever where
    window with within
    """.split()
)

_CAMEL_1 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_2 = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_HASH_LEN = 8


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]


@lru_cache(maxsize=65536)
def normalize_identifier(name: str, max_length: int | None = None) -> str:
    """Turn an event name or property key into a safe warehouse identifier."""
    original = name
    # Fold accents to ASCII where a plain letter exists (é -> e); the rest
    # (emoji, CJK) becomes separators and, if nothing is left, a hash.
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    text = _CAMEL_2.sub(r"\1_\2", _CAMEL_1.sub(r"\1_\2", text)).lower()
    text = _NON_WORD.sub("_", text).strip("_")
    if not text:
        text = "_" + short_hash(original)
    if text[0].isdigit():
        text = "_" + text
    if text in RESERVED_WORDS:
        text += "_"
    if max_length is not None and len(text) > max_length:
        keep = max(1, max_length - _HASH_LEN - 1)
        text = text[:keep].rstrip("_") + "_" + short_hash(original)
    return text


def table_name_for_event(event: str, max_length: int | None = None) -> str:
    """Table name for an event name: ``$ai_generation`` -> ``ai_generation``."""
    return normalize_identifier(event.lstrip("$"), max_length)


# Transport-level fields left out of the content hash: a client retry that
# re-sends the same event later must hash to the same message_id.
TRANSPORT_FIELDS = frozenset(
    {"sent_at", "sentAt", "received_at", "receivedAt", "api_key", "writeKey"}
)
MAX_ID_LENGTH = 255


def content_message_id(obj: dict[str, Any]) -> str:
    """Stable id for an event without uuid/messageId: a hash of its canonical content."""
    canonical = {k: v for k, v in obj.items() if k not in TRANSPORT_FIELDS}
    digest = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def message_id(source_id: Any, obj: dict[str, Any], event: str | None) -> str:
    """The event's id: ``source_id`` as given (NULs stripped), else the content hash of ``obj``.

    Taken from the event exactly as received, before anything normalizes it,
    so a replay yields the same id.
    """
    if source_id is None or source_id == "":
        return content_message_id(obj)
    if isinstance(source_id, bool) or not isinstance(source_id, (str, int)):
        raise EventRejected(
            Reason.INVALID_MESSAGE_ID,
            f"message id must be a string, got {json_type(source_id)}",
            "messageId",
            event,
        )
    text = str(source_id).replace("\x00", "")
    if not text.strip():
        return content_message_id(obj)
    if len(text) > MAX_ID_LENGTH:
        raise EventRejected(
            Reason.INVALID_MESSAGE_ID,
            f"message id is longer than {MAX_ID_LENGTH} characters",
            "messageId",
            event,
        )
    return text
