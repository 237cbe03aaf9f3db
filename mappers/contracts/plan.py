"""Tracking plans: the declared shape of each event, loaded from a versioned file.

A plan (YAML, or the same document as JSON)::

    version: 3                      # required; recorded with every violation
    undeclared_events: allow        # allow | flag | reject (track events only)
    policy:                         # plan-wide defaults, per violation kind
      missing_required: dead_letter
    events:
      workflow_saved:
        policy: {wrong_type: drop_property}   # or one action for every kind
        additional_properties: false          # else undeclared keys are fine
        properties:
          flow_id: {type: string, required: true}
          mode: {type: string, enum: [draft, published]}
          nodes: {type: integer, minimum: 0, maximum: 500}
          email: {type: string, pii: hash}    # pii: redact | hash

The seven platform events always have a contract, generated from their
models (``mappers.models``); a plan entry of the same name adds to it (its
properties win).  Nothing here reads the environment or the network.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mappers.models import KNOWN_EVENTS, TypedProperties, property_key

Action = Literal["allow", "drop_property", "dead_letter"]
PropertyType = Literal["string", "integer", "number", "boolean", "array", "object", "any"]

#: Violation kinds, each with its own policy.
KINDS: tuple[str, ...] = (
    "missing_required",
    "wrong_type",
    "not_in_enum",
    "out_of_range",
    "undeclared_property",
    "undeclared_event",
)
DEFAULT_POLICY: dict[str, Action] = {
    "missing_required": "dead_letter",
    "wrong_type": "dead_letter",
    "not_in_enum": "dead_letter",
    "out_of_range": "dead_letter",
    "undeclared_property": "allow",
    "undeclared_event": "allow",
}


class PlanError(ValueError):
    """The plan file is missing or invalid (the message names the file and the field)."""


def _policy(value: Any) -> Any:
    if isinstance(value, str):
        return {kind: value for kind in KINDS}
    return value


class PropertySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: PropertyType = "any"
    required: bool = False
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pii: Literal["redact", "hash"] | None = None
    description: str = ""


class EventContract(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    properties: dict[str, PropertySpec] = Field(default_factory=dict)
    additional_properties: bool = True
    policy: dict[str, Action] = Field(default_factory=dict)
    #: Generated from a typed model and not extended by the plan: the normalizer's own
    #: validation already enforces it, so the contracts step skips it (hot path).
    generated: bool = Field(False, exclude=True)

    _check_policy = field_validator("policy", mode="before")(classmethod(lambda c, v: _policy(v)))

    @field_validator("policy")
    @classmethod
    def _known_kinds(cls, value: dict[str, Action]) -> dict[str, Action]:
        unknown = sorted(set(value) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown violation kind {unknown[0]!r}; one of {', '.join(KINDS)}")
        return value


class TrackingPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | str
    name: str = "tracking-plan"
    undeclared_events: Literal["allow", "flag", "reject"] = "allow"
    policy: dict[str, Action] = Field(default_factory=dict)
    events: dict[str, EventContract] = Field(default_factory=dict)

    _check_policy = field_validator("policy", mode="before")(classmethod(lambda c, v: _policy(v)))

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def action(self, event: str, kind: str) -> Action:
        """The policy for ``kind`` on ``event``: the event's, else the plan's, else the default."""
        contract = self.events.get(event)
        if contract is not None and kind in contract.policy:
            return contract.policy[kind]
        if kind == "undeclared_event":
            return "dead_letter" if self.undeclared_events == "reject" else "allow"
        return self.policy.get(kind, DEFAULT_POLICY[kind])


# ------------------------------------------------------------------ platform
def _spec_for(annotation: Any, metadata: list[Any]) -> PropertySpec:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = set(args)
    else:
        kinds = {annotation}
    origins = {typing.get_origin(k) or k for k in kinds}
    if origins == {str}:
        kind = "string"
    elif origins == {int}:
        kind = "integer"
    elif origins <= {int, float}:
        kind = "number"
    elif origins == {bool}:
        kind = "boolean"
    elif origins == {list}:
        kind = "array"
    else:
        kind = "any"  # e.g. a flag response: bool or variant text
    minimum = maximum = None
    for m in metadata:
        if getattr(m, "ge", None) is not None:
            minimum = float(m.ge)
        if getattr(m, "le", None) is not None:
            maximum = float(m.le)
    return PropertySpec(type=kind, minimum=minimum, maximum=maximum)


def platform_contract(model: type[TypedProperties]) -> EventContract:
    """A platform event's contract, from its typed model (every property optional)."""
    props: dict[str, PropertySpec] = {}
    for name, info in model.model_fields.items():
        spec = _spec_for(info.annotation, list(info.metadata))
        if name in model.sensitive:
            spec.description = "sensitive: redacted before it leaves the pipeline"
        props[property_key(model, name)] = spec
    return EventContract(
        description=f"Platform event (table {model.table}).", properties=props, generated=True
    )


def platform_plan() -> dict[str, EventContract]:
    return {name: platform_contract(model) for name, model in KNOWN_EVENTS.items()}


def merged(plan: TrackingPlan) -> TrackingPlan:
    """``plan`` with the platform events' generated contracts under its own declarations."""
    events = platform_plan()
    for name, contract in plan.events.items():
        base = events.get(name)
        if base is None:
            events[name] = contract
            continue
        events[name] = contract.model_copy(
            update={"properties": {**base.properties, **contract.properties}, "generated": False}
        )
    return plan.model_copy(update={"events": events})


def default_plan() -> TrackingPlan:
    """No plan file: the platform events' contracts, everything else allowed."""
    return merged(TrackingPlan(version=0, name="platform"))


def load_plan(path: Path | None) -> TrackingPlan:
    if path is None:
        return default_plan()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"tracking plan {path}: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"tracking plan {path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanError(f"tracking plan {path}: must be a mapping with version and events")
    if "$defs" in doc or "$schema" in doc:
        doc = from_json_schema(doc)
    try:
        plan = TrackingPlan.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "plan"
        raise PlanError(f"tracking plan {path}: {where}: {err['msg']}") from None
    return merged(plan)


# --------------------------------------------------------------- JSON Schema
def _schema_type(value: Any) -> str:
    kinds = [value] if isinstance(value, str) else list(value or [])
    kinds = [k for k in kinds if k != "null"]
    return kinds[0] if len(kinds) == 1 and kinds[0] in _JSON_TYPES else "any"


def from_json_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """A plan written as JSON Schema (what ``etl plan export`` prints) -> the plan document.

    One ``$defs`` entry per event; ``required``, ``type``, ``enum``,
    ``minimum``/``maximum``, ``additionalProperties`` and our ``x-pii``,
    ``x-plan-version``, ``x-undeclared-events`` and ``x-policy`` are read.
    """
    events: dict[str, Any] = {}
    for name, schema in (doc.get("$defs") or {}).items():
        if not isinstance(schema, dict):
            continue
        required = set(schema.get("required") or ())
        props: dict[str, Any] = {}
        for key, spec in (schema.get("properties") or {}).items():
            spec = spec if isinstance(spec, dict) else {}
            prop: dict[str, Any] = {
                "type": _schema_type(spec.get("type")),
                "required": key in required,
            }
            for field in ("enum", "minimum", "maximum", "description"):
                if field in spec:
                    prop[field] = spec[field]
            if "x-pii" in spec:
                prop["pii"] = spec["x-pii"]
            props[key] = prop
        for key in required - set(props):
            props[key] = {"required": True}
        event: dict[str, Any] = {
            "properties": props,
            "additional_properties": schema.get("additionalProperties", True) is not False,
        }
        if "x-policy" in schema:
            event["policy"] = schema["x-policy"]
        events[name] = event
    out: dict[str, Any] = {
        "version": doc.get("x-plan-version", doc.get("version", doc.get("$id", 0))),
        "events": events,
    }
    title = doc.get("title")
    if isinstance(title, str):
        out["name"] = title.rsplit("@", 1)[0]
    if "x-undeclared-events" in doc:
        out["undeclared_events"] = doc["x-undeclared-events"]
    if "x-policy" in doc:
        out["policy"] = doc["x-policy"]
    return out


_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "array": "array",
    "object": "object",
}


def json_schema(plan: TrackingPlan) -> dict[str, Any]:
    """The plan as JSON Schema (draft 2020-12): one schema per event's ``properties``."""
    defs: dict[str, Any] = {}
    for name, contract in sorted(plan.events.items()):
        props: dict[str, Any] = {}
        for key, spec in contract.properties.items():
            s: dict[str, Any] = {}
            if spec.type in _JSON_TYPES:
                s["type"] = _JSON_TYPES[spec.type]
            if spec.enum is not None:
                s["enum"] = spec.enum
            if spec.minimum is not None:
                s["minimum"] = spec.minimum
            if spec.maximum is not None:
                s["maximum"] = spec.maximum
            if spec.pii:
                s["x-pii"] = spec.pii
            if spec.description:
                s["description"] = spec.description
            props[key] = s
        schema: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "additionalProperties": contract.additional_properties,
        }
        required = sorted(k for k, s in contract.properties.items() if s.required)
        if required:
            schema["required"] = required
        if contract.description:
            schema["description"] = contract.description
        if contract.policy:
            schema["x-policy"] = contract.policy
        defs[name] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": plan.label,
        "x-plan-version": plan.version,
        "x-undeclared-events": plan.undeclared_events,
        **({"x-policy": plan.policy} if plan.policy else {}),
        "$defs": defs,
    }


def dumps_schema(plan: TrackingPlan) -> str:
    return orjson.dumps(json_schema(plan), option=orjson.OPT_INDENT_2).decode()
