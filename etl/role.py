"""What one worker process does: its *role*.

``normalize`` reads the raw topic; ``sink:<name>`` delivers to one
destination; ``all`` (only for ``etl worker`` on one machine) supervises one
process per role.  Each role is its own Kafka consumer group, so each scales
alone and a slow destination never holds back another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RoleKind = Literal["all", "normalize", "sink"]


@dataclass(frozen=True, slots=True)
class Role:
    kind: RoleKind
    sink: str | None = None

    @classmethod
    def parse(cls, value: object) -> Role:
        """``all``, ``normalize`` or ``sink:<name>`` (the name is checked by the settings)."""
        if isinstance(value, Role):
            return value
        text = str(value).strip().lower()
        if text in ("all", "normalize"):
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("sink:") and text[5:].strip():
            return cls("sink", text[5:].strip())
        raise ValueError(f"role must be all, normalize or sink:<name>, got {text!r}")

    @classmethod
    def for_sink(cls, name: str) -> Role:
        return cls("sink", name)

    @property
    def is_sink(self) -> bool:
        return self.kind == "sink"

    def group(self, prefix: str) -> str:
        """The consumer group of this role: ``<prefix>-normalize`` or ``<prefix>-sink-<name>``."""
        if self.kind == "sink":
            return f"{prefix}-sink-{self.sink}"
        if self.kind == "normalize":
            return f"{prefix}-normalize"
        raise ValueError("role 'all' has no consumer group of its own")

    @property
    def slug(self) -> str:
        """A file-name-safe form: ``normalize``, ``sink-duckdb``."""
        return str(self).replace(":", "-")

    def __str__(self) -> str:
        return f"sink:{self.sink}" if self.kind == "sink" else self.kind


def sink_of_stage(stage: object) -> str | None:
    """The sink named by a dead letter's ``stage`` (``sink:<name>``), else None."""
    try:
        role = Role.parse(stage)
    except ValueError:
        return None
    return role.sink
