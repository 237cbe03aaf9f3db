"""Typed properties of the platform's own events: safe coercion, or a rejection naming the field."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import ValidationError

from mappers.errors import EventRejected, Reason
from mappers.jsontypes import preview
from mappers.models import KNOWN_EVENTS, SENSITIVE_PROPERTIES, TypedProperties
from mappers.sanitise import INT64_MAX, INT64_MIN

_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}


@cache
def field_keys(model: type[TypedProperties]) -> tuple[tuple[str, str], ...]:
    """(field name, property key as sent) per field; read once (pydantic's accessor is slow)."""
    return tuple((name, info.alias or name) for name, info in model.model_fields.items())


def coerce_typed(name: str, properties: dict[str, Any]) -> None:
    """Coerce a known event's typed properties in place; reject values that do not coerce safely."""
    model = KNOWN_EVENTS.get(name)
    if model is None:
        return
    try:
        typed = model.model_validate(properties)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        field_path = f"properties.{key}"
        reason = Reason.OUT_OF_RANGE if err["type"] in _RANGE_ERRORS else Reason.INVALID_PROPERTY
        shown = "" if key in SENSITIVE_PROPERTIES else f" (got {preview(err.get('input'))})"
        raise EventRejected(
            reason, f"{field_path}: {err['msg']}{shown}", field_path, name
        ) from None
    values = typed.__dict__
    for field_name, key in field_keys(model):
        if key in properties:
            coerced = values[field_name]
            if type(coerced) is int and not INT64_MIN <= coerced <= INT64_MAX:
                # No warehouse integer column holds it: say so here, not as a sink retry storm.
                raise EventRejected(
                    Reason.OUT_OF_RANGE,
                    f"properties.{key}: integer outside the 64-bit range {INT64_MIN}..{INT64_MAX}",
                    f"properties.{key}",
                    name,
                )
            if coerced is not None or properties[key] is None:
                properties[key] = coerced
    if name == "$ai_generation" and "$ai_total_cost_usd" not in properties:
        parts = [properties.get("$ai_input_cost_usd"), properties.get("$ai_output_cost_usd")]
        if any(isinstance(p, float) for p in parts):
            properties["$ai_total_cost_usd"] = sum(p for p in parts if isinstance(p, float))
