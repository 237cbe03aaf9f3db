"""A flag decision and where it came from (PostHog, the flag database, or the default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Source = Literal["posthog", "db", "default"]


@dataclass(frozen=True, slots=True)
class FlagDecision:
    key: str
    enabled: bool
    variant: str | None
    source: Source
    payload: Any = None

    def as_context(self) -> dict[str, Any]:
        """The form recorded in an event's ``context.flags.<key>``."""
        return {"enabled": self.enabled, "variant": self.variant, "source": self.source}


def default_decision(key: str) -> FlagDecision:
    return FlagDecision(key, True, None, "default")
