"""The DuckDB sink's settings section (apart from the sink, so that reading the
settings does not load DuckDB and Arrow into every worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from etl.config import SinkSection


class DuckDBSettings(SinkSection):
    path: Path = Field(Path("warehouse.duckdb"), description="Embedded warehouse file.")
    max_hold_seconds: float = Field(
        5.0,
        ge=0,
        description="Longest the sink keeps the file locked under load before letting readers "
        "and other writers in (0 = after every batch).",
    )
    idle_release_seconds: float = Field(
        1.0,
        ge=0,
        description="How long the sink keeps the file with no batch arriving before letting it "
        "go (that close checkpoints and, with merge_row_groups = when_idle, merges). A reader "
        "that asks for the file gets it at the next idle moment (a flush interval without "
        "input). 0 = at the first idle moment, which serves latency better with always.",
    )
    memory_limit_mb: int = Field(
        128, ge=64, description="DuckDB memory limit of the sink process, MB."
    )
    checkpoint_threshold_mb: int = Field(
        256,
        ge=1,
        description="Write-ahead log size, MB, at which a commit checkpoints the file. Above "
        "what the sink writes in one hold, checkpoints happen when it lets the file go, not "
        "inside a batch's commit.",
    )
    merge_row_groups: Literal["always", "when_idle"] = Field(
        "when_idle",
        description="When DuckDB may merge small row groups, rewriting rows already stored. "
        "when_idle: a hold of 30,720 events rows or more ends with a checkpoint of its own "
        "rows only (shorter pauses under load); merging waits until the sink has been idle "
        "for idle_release_seconds, stops or erases. always: at every checkpoint (DuckDB's "
        "own policy).",
    )
    max_merge_deferral_seconds: float = Field(
        600.0,
        ge=0,
        description="With merge_row_groups = when_idle, how long holds under load go without "
        "merging: a hold of fewer than 30,720 events rows merges only when no close has "
        "merged for this long (a merging checkpoint rewrites every row group that is not "
        "full, seconds under load). 0 = small holds always merge.",
    )
