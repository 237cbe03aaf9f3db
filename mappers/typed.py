"""Typed properties of the platform's own events: safe coercion, or a rejection naming the field."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

import annotated_types
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


#: Takes a property value; returns it as the model would coerce it, or MISS to ask the model.
Check = Callable[[Any], Any]
MISS = object()
#: Integers a float holds exactly (beyond, the model decides).
_EXACT_FLOAT_INT = 2**53


def ask_model(value: Any) -> Any:
    """The check of a field no fast check covers: every value goes to the model."""
    return MISS


def _bounds(metadata: list[Any]) -> tuple[float, float] | None:
    """The field's ge/le bounds; None for a constraint the fast checks do not know."""
    lo, hi = -math.inf, math.inf
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lo = float(item.ge)  # type: ignore[arg-type]
        elif isinstance(item, annotated_types.Le):
            hi = float(item.le)  # type: ignore[arg-type]
        else:
            return None
    return lo, hi


def _check_for(annotation: Any, metadata: list[Any]) -> Check:
    """The fast check of one field: accepts only values whose coercion is plain
    (a value of the field's own type, in range); anything else is MISS.  A field
    of another shape (a new model's) gets :func:`ask_model`.
    """
    kinds = tuple(a for a in get_args(annotation) if a is not NoneType)
    bounds = _bounds(metadata)
    if get_origin(annotation) not in (Union, UnionType) or not kinds or bounds is None:
        return ask_model
    lo, hi = bounds
    if kinds == (str,) or kinds == (str, bool):
        allowed = (str, bool) if bool in kinds else (str,)

        def text(v: Any) -> Any:
            return v if type(v) in allowed or v is None else MISS

        return text
    if kinds == (bool,):
        return lambda v: v if type(v) is bool or v is None else MISS
    if kinds == (float,):

        def real(v: Any) -> Any:
            kind = type(v)
            if kind is float:
                return v if math.isfinite(v) and lo <= v <= hi else MISS
            if kind is int and -_EXACT_FLOAT_INT <= v <= _EXACT_FLOAT_INT and lo <= v <= hi:
                return float(v)
            return None if v is None else MISS

        return real
    if kinds == (int,):
        # Integer bounds: compared as floats, 2**63 would pass as INT64_MAX.
        top = INT64_MAX if hi >= INT64_MAX else math.floor(hi)
        bottom = INT64_MIN if lo <= INT64_MIN else math.ceil(lo)

        def whole(v: Any) -> Any:
            if type(v) is int:
                return v if bottom <= v <= top else MISS
            return None if v is None else MISS

        return whole
    if len(kinds) == 1 and get_origin(kinds[0]) is list and get_args(kinds[0]) == (str,):

        def strings(v: Any) -> Any:
            if type(v) is list and all(type(x) is str for x in v):
                return list(v)
            return None if v is None else MISS

        return strings
    return ask_model


@cache
def fast_checks(model: type[TypedProperties]) -> tuple[tuple[str, str, Check], ...]:
    """(property key as sent, field name, check) per field, built once from the model."""
    return tuple(
        (info.alias or name, name, _check_for(info.annotation, info.metadata))
        for name, info in model.model_fields.items()
    )


def _coerce_fast(model: type[TypedProperties], properties: dict[str, Any]) -> bool:
    """Coerce in place when every typed value is plain; False (nothing changed) otherwise.

    The model gives the same values for what passes here; anything else, and
    every rejection with its message, is the model's to say.
    """
    coerced: list[tuple[str, Any]] = []
    for key, name, check in fast_checks(model):
        if key in properties:
            value = check(properties[key])
            if value is MISS:
                return False
            coerced.append((key, value))
        elif name != key and name in properties:
            return False  # the model also reads a field by its name
    for key, value in coerced:
        properties[key] = value
    return True


def coerce_typed(name: str, properties: dict[str, Any]) -> None:
    """Coerce a known event's typed properties in place; reject values that do not coerce safely."""
    model = KNOWN_EVENTS.get(name)
    if model is None:
        return
    if not _coerce_fast(model, properties):
        coerce_with_model(model, name, properties)
    _total_cost(name, properties)


def coerce_with_model(model: type[TypedProperties], name: str, properties: dict[str, Any]) -> None:
    """The model's coercion (pydantic): the reference the fast checks agree with."""
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


def _total_cost(name: str, properties: dict[str, Any]) -> None:
    if name == "$ai_generation" and "$ai_total_cost_usd" not in properties:
        parts = [properties.get("$ai_input_cost_usd"), properties.get("$ai_output_cost_usd")]
        if any(isinstance(p, float) for p in parts):
            properties["$ai_total_cost_usd"] = sum(p for p in parts if isinstance(p, float))
