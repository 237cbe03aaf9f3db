"""The one identifier rule, used for every table and column built from event data.

* lower snake_case over ``[a-z0-9_]`` (camelCase is split, anything else becomes ``_``);
* a leading digit gets a ``_`` prefix;
* a reserved word gets a ``_`` suffix (``select`` -> ``select_``);
* a name longer than the warehouse's limit is cut and ends in ``_`` + 8 hex
  characters of a hash of the *original* name, so two long names that share a
  prefix stay distinct and the mapping is stable across runs and workers.

Warehouses declare their limit as a sink capability; the rule itself never
branches on a warehouse name.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

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
