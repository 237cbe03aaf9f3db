"""PostHog's bucketing, reproduced so the flag database keeps every user on the same side.

A flag's rollout compares a hash-derived point in [0, 1] with the rollout
percentage; a variant is the consecutive range the ``"variant"``-salted point
falls in.  Moving a flag between PostHog and the database therefore keeps each
user in the same bucket and the same variant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

LONG_SCALE = float(0xFFFFFFFFFFFFFFF)


def bucket(key: str, identifier: Any, salt: str = "") -> float:
    """PostHog's bucket of an id for a flag, in [0, 1]: sha1 of ``"{key}.{id}{salt}"``."""
    digest = hashlib.sha1(f"{key}.{identifier}{salt}".encode()).hexdigest()
    return int(digest[:15], 16) / LONG_SCALE


def pick_variant(key: str, identifier: Any, variants: Iterable[Mapping[str, Any]]) -> str | None:
    """The variant PostHog would pick: consecutive ranges of the ``"variant"``-salted bucket."""
    point = bucket(key, identifier, salt="variant")
    low = 0.0
    for variant in variants:
        high = low + float(variant["rollout_percentage"]) / 100
        if low <= point < high:
            return str(variant["key"])
        low = high
    return None
