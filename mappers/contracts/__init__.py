"""Event contracts: tracking plans (``plan``) and their enforcement (``check``)."""

from mappers.contracts.check import ContractChecker, ContractOutcome, Violation
from mappers.contracts.plan import (
    KINDS,
    PlanError,
    TrackingPlan,
    default_plan,
    dumps_schema,
    json_schema,
    load_plan,
)

__all__ = [
    "KINDS",
    "ContractChecker",
    "ContractOutcome",
    "PlanError",
    "TrackingPlan",
    "Violation",
    "default_plan",
    "dumps_schema",
    "json_schema",
    "load_plan",
]
