"""Applying a tracking plan to unified events (the normalize stage's contracts step).

Each event is checked against its event's contract; every violation gets the
action its policy names:

* ``allow``: the event lands as sent, the violation listed in
  ``context.etl.violations`` (the warehouse's ``contract_violations`` rows);
* ``drop_property``: the offending property is removed (and listed);
* ``dead_letter``: the whole event goes to the dead letters with reason
  ``contract_violation`` and the property named.

PII-marked properties of landed events are then redacted or replaced by
their keyed hash.  Values are never put in a violation's text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mappers.contracts.plan import PropertySpec, TrackingPlan
from mappers.redact import Redactor

_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


@dataclass(slots=True)
class Violation:
    kind: str
    property: str | None
    detail: str
    action: str

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "property": self.property,
            "detail": self.detail,
            "action": self.action,
        }


@dataclass(slots=True)
class ContractOutcome:
    """Indexes (into the checked list) of the events to dead-letter, with why; counts."""

    dead: dict[int, Violation] = field(default_factory=dict)
    #: (event label, kind, action) -> violations.
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)


def _property_violations(key: str, spec: PropertySpec, value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []  # an explicit null is an absent value; "required" catches it
    check = _CHECKS.get(spec.type)
    if check is not None and not check(value):
        return [("wrong_type", f"{key} must be {spec.type}, got {_type_name(value)}")]
    out: list[tuple[str, str]] = []
    if spec.enum is not None and value not in spec.enum:
        out.append(("not_in_enum", f"{key} is not one of the {len(spec.enum)} allowed values"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.minimum is not None and value < spec.minimum:
            out.append(("out_of_range", f"{key} is below its minimum {spec.minimum:g}"))
        if spec.maximum is not None and value > spec.maximum:
            out.append(("out_of_range", f"{key} is above its maximum {spec.maximum:g}"))
    return out


class ContractChecker:
    def __init__(self, plan: TrackingPlan, redactor: Redactor) -> None:
        self.plan = plan
        self.redactor = redactor
        self._pii = {
            name: {k: s.pii for k, s in c.properties.items() if s.pii}
            for name, c in plan.events.items()
        }

    def violations(self, event: dict[str, Any]) -> list[Violation]:
        """Every violation of ``event`` with its action (nothing changed)."""
        name = event["event"]
        plan = self.plan
        contract = plan.events.get(name)
        if contract is None:
            if event.get("type") != "track" or plan.undeclared_events == "allow":
                return []
            action = plan.action(name, "undeclared_event")
            return [Violation("undeclared_event", None, f"{name} is not in the plan", action)]
        if contract.generated:
            return []
        props = event.get("properties") or {}
        found: list[Violation] = []
        for key, spec in contract.properties.items():
            value = props.get(key)
            if spec.required and value is None:
                found.append(
                    Violation(
                        "missing_required",
                        key,
                        f"required property {key} is missing",
                        plan.action(name, "missing_required"),
                    )
                )
                continue
            for kind, detail in _property_violations(key, spec, value):
                found.append(Violation(kind, key, detail, plan.action(name, kind)))
        if not contract.additional_properties:
            for key in props:
                if key not in contract.properties:
                    found.append(
                        Violation(
                            "undeclared_property",
                            key,
                            f"{key} is not declared",
                            plan.action(name, "undeclared_property"),
                        )
                    )
        return found

    def apply(self, events: list[dict[str, Any]]) -> ContractOutcome:
        """Check and fix ``events`` in place; the outcome names those to dead-letter."""
        outcome = ContractOutcome()
        declared = self.plan.events
        for index, ev in enumerate(events):
            found = self.violations(ev)
            label = ev["event"] if ev["event"] in declared else "(undeclared)"
            for v in found:
                outcome.counts[(label, v.kind, v.action)] += 1
            fatal = next((v for v in found if v.action == "dead_letter"), None)
            if fatal is not None:
                outcome.dead[index] = fatal
                continue
            if found:
                props = ev["properties"]
                for v in found:
                    if v.action == "drop_property" and v.property is not None:
                        props.pop(v.property, None)
                context = ev["context"]
                etl_meta = context.get("etl") if isinstance(context.get("etl"), dict) else {}
                context["etl"] = {
                    **etl_meta,
                    "contract": self.plan.label,
                    "violations": [v.as_json() for v in found],
                }
            pii = self._pii.get(ev["event"])
            if pii:
                self._protect(ev["properties"], pii)
        return outcome

    def _protect(self, props: dict[str, Any], pii: Mapping[str, str]) -> None:
        for key, how in pii.items():
            value = props.get(key)
            if value is None:
                continue
            text = value if isinstance(value, str) else str(value)
            if how == "hash":
                # Without a key there is no safe hash: keep nothing rather than a guessable digest.
                props[key] = self.redactor.keyed_hash(text) or "[redacted]"
            else:
                props[key] = self.redactor.redact_text(text)
