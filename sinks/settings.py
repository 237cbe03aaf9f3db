"""The complete settings: the core sections plus one section per destination.

Each destination declares its own section beside its sink (``SETTINGS`` in
``sinks/<name>.py``, a :class:`etl.config.SinkSection` that names its
required fields and its vendor variables).  This class composes them, and its
checks read those declarations instead of branching on sink names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError, field_validator, model_validator

from etl.config import (
    ConfigError,
    CoreSettings,
    FlagSettings,
    SinkSection,
    format_validation_error,
    sections,
)
from etl.role import Role
from sinks.bigquery import BigQuerySettings
from sinks.duckdb_settings import DuckDBSettings
from sinks.posthog import PostHogSinkSettings
from sinks.rudderstack import RudderStackSettings
from sinks.snowflake_settings import SnowflakeSettings


class Settings(CoreSettings):
    """All settings of the job (see the README's configuration table)."""

    duckdb: DuckDBSettings = DuckDBSettings()
    posthog: PostHogSinkSettings = PostHogSinkSettings()
    rudderstack: RudderStackSettings = RudderStackSettings()
    snowflake: SnowflakeSettings = SnowflakeSettings()
    bigquery: BigQuerySettings = BigQuerySettings()

    @field_validator("posthog", mode="before")
    @classmethod
    def _posthog_project(cls, value: object) -> object:
        # The core section (the flag service's view of the project) is accepted too.
        if isinstance(value, BaseModel) and not isinstance(value, PostHogSinkSettings):
            return dict(value)
        return value

    @field_validator("sinks")
    @classmethod
    def _known_sinks(cls, value: list[str]) -> list[str]:
        _check_known(value, "")
        return value

    @field_validator("flags")
    @classmethod
    def _known_gated_sinks(cls, value: FlagSettings) -> FlagSettings:
        _check_known(value.gates, "gates: ", "ETL_FLAGS__GATES")
        return value

    @model_validator(mode="after")
    def _destinations_known_and_configured(self) -> Settings:
        if self.role.is_sink:
            _check_known([str(self.role.sink)], "role: ", "ETL_ROLE")
        # A sink switched on without its destination is a deployment error:
        # fail at start-up, naming every missing variable at once.
        problems = []
        for sink in self.checked_sinks():
            missing = getattr(self, sink).problems(sink)
            if missing:
                problems.append(
                    f"sink {sink!r} is enabled but not configured; set {', '.join(missing)}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def checked_sinks(self) -> list[str]:
        """The enabled sinks, plus this worker's own sink (a worker validates what it runs)."""
        names = list(self.sinks)
        if self.role.is_sink and self.role.sink not in names:
            names.append(str(self.role.sink))
        return names

    def roles(self) -> list[Role]:
        """One worker role per stage: normalize, then one per enabled sink."""
        return [Role("normalize"), *(Role.for_sink(name) for name in self.sinks)]


def _check_known(names: object, prefix: str, variable: str | None = None) -> None:
    known = sink_names()
    unknown = [name for name in names if name not in known]  # type: ignore[attr-defined]
    if unknown:
        where = f" (env {variable})" if variable else ""
        raise ValueError(
            f"{prefix}unknown sink {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(known)}{where}"
        )


def sink_names() -> list[str]:
    """Every destination this build knows, in declaration order."""
    return [name for name, model in sections(Settings).items() if issubclass(model, SinkSection)]


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and ``overrides``),
    failing loudly with the field named.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
