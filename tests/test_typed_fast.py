"""The fast typed checks agree with the pydantic models, value for value and error for error.

``coerce_typed`` accepts plain values without building a model; everything
else goes to the model.  For every typed field of every known event, and a
set of hostile values, both routes must give the same properties, or the same
rejection (reason, field and message).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from mappers.errors import EventRejected
from mappers.models import KNOWN_EVENTS
from mappers.sanitise import BigInt
from mappers.typed import (
    _coerce_fast,
    _total_cost,
    ask_model,
    coerce_typed,
    coerce_with_model,
    fast_checks,
)

VALUES: list[Any] = [
    None,
    "",
    " padded ",
    "text",
    "12",
    "1e3",
    "-0.5",
    "nan",
    "true",
    BigInt("123456789012345678901234"),
    0,
    1,
    -1,
    7,
    100,
    599,
    600,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    0.0,
    -0.0,
    0.5,
    1.0,
    1.5,
    -2.5,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
    [],
    ["a", "b"],
    ["a", 1],
    [None],
    {"nested": 1},
]


def outcome(route: str, name: str, properties: dict[str, Any]) -> tuple[str, Any]:
    props = copy.deepcopy(properties)
    try:
        if route == "model":
            coerce_with_model(KNOWN_EVENTS[name], name, props)
            _total_cost(name, props)
        else:
            coerce_typed(name, props)
    except EventRejected as exc:
        return "rejected", (exc.reason, exc.field, exc.error)
    return "landed", props


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to itself and int/float told apart (a column's type depends on it)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


CASES = [
    (name, key, field, value)
    for name, model in KNOWN_EVENTS.items()
    for key, field, _ in fast_checks(model)
    for value in VALUES
]


@pytest.mark.parametrize(
    ("name", "key", "field", "value"), CASES, ids=[f"{c[0]}.{c[1]}={c[3]!r}" for c in CASES]
)
def test_fast_route_agrees_with_the_model(name: str, key: str, field: str, value: Any) -> None:
    properties = {key: value, "other": "kept"}
    assert same(outcome("fast", name, properties), outcome("model", name, properties))


@pytest.mark.parametrize("name", list(KNOWN_EVENTS))
def test_a_field_sent_under_its_name_goes_to_the_model(name: str) -> None:
    model = KNOWN_EVENTS[name]
    for key, field, _ in fast_checks(model):
        if key != field:
            props = {field: "not a number"}
            assert _coerce_fast(model, dict(props)) is False
            assert same(outcome("fast", name, props), outcome("model", name, props))


def test_every_typed_field_has_a_fast_check() -> None:
    """A field left to the model would be correct but slow: say so when a model changes."""
    slow = [
        f"{name}.{key}"
        for name, model in KNOWN_EVENTS.items()
        for key, _, check in fast_checks(model)
        if check is ask_model
    ]
    assert slow == []


def test_the_fast_route_is_taken_for_plain_events() -> None:
    """The common case never reaches pydantic (else the fast path silently does nothing)."""
    props = {"flow_id": "f1", "tools_used": ["a"], "time_ms": 12, "success": True}
    assert _coerce_fast(KNOWN_EVENTS["flow_executed"], props) is True
    assert props["time_ms"] == 12.0 and type(props["time_ms"]) is float
    gen = {"$ai_input_tokens": 10, "$ai_input_cost_usd": 0.5, "$ai_output_cost_usd": 1}
    coerce_typed("$ai_generation", gen)
    assert gen["$ai_total_cost_usd"] == 1.5 and type(gen["$ai_output_cost_usd"]) is float
