"""``etl`` commands beside Faust's own ``worker``: demo, query.

They are registered on the one app, so ``etl --help`` lists them with Faust's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson
from faust.cli import AppCommand, argument, option

from streams.app import app


@app.command(
    option("--events", type=int, default=20_000, show_default=True, help="Synthetic events to produce."),
    option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
           default=None, help="JSON-lines file: each line is one Kafka message value."),
    option("--warehouse", type=click.Path(dir_okay=False, path_type=Path), default=Path("warehouse.duckdb"),
           show_default=True, help="DuckDB warehouse file."),
    option("--sinks", default=None, help="Comma-separated sinks (default: ETL_SINKS, else duckdb)."),
    option("--partitions", type=int, default=4, show_default=True, help="Partitions per topic."),
    option("--seed", type=int, default=7, show_default=True, help="Seed of the synthetic stream."),
    option("--json", "json_output", is_flag=True, default=False, help="End with one JSON summary line."),
)
async def demo(
    self: AppCommand,
    events: int,
    input_path: Path | None,
    warehouse: Path,
    sinks: str | None,
    partitions: int,
    seed: int,
    json_output: bool,
) -> None:
    """Run the main job on embedded defaults: broker, workers, synthetic stream, summary."""
    import asyncio

    from etl.demo import print_summary, run_demo

    sink_list = [s.strip() for s in sinks.split(",") if s.strip()] if sinks else None
    result = await asyncio.to_thread(
        run_demo,
        events=events,
        input_path=input_path,
        warehouse=warehouse,
        sinks=sink_list,
        json_output=json_output,
        partitions=partitions,
        seed=seed,
    )
    print_summary(result)
    if json_output:
        sys.stdout.write(orjson.dumps(result.as_json()).decode() + "\n")
    sys.stdout.flush()


@app.command(
    argument("sql", nargs=-1, required=True),
    option("--warehouse", type=click.Path(dir_okay=False, path_type=Path), default=None,
           help="DuckDB warehouse file (default: ETL_DUCKDB__PATH)."),
    option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True),
)
async def query(self: AppCommand, sql: tuple[str, ...], warehouse: Path | None, fmt: str) -> None:
    """Run read-only SQL against the embedded warehouse: etl query "SELECT ..." """
    from etl.query import run_query

    run_query(" ".join(sql), warehouse, fmt)


@app.command(
    argument("action", type=click.Choice(["list", "get", "set", "delete", "migrate"])),
    argument("key", required=False),
    option("--enabled/--disabled", "enabled", default=True, show_default=True, help="set: the flag's on/off switch."),
    option("--rollout", type=click.FloatRange(0, 100), default=None, help="set: percentage of eligible users (PostHog bucketing)."),
    option("--variants", default=None, help='set: "control:50,test:50" or a JSON list of {key, rollout_percentage, payload}.'),
    option("--workspaces", default=None, help="set: only these workspaces are eligible (comma-separated)."),
    option("--users", default=None, help="set: only these distinct_ids are eligible (comma-separated)."),
    option("--bucket-by", type=click.Choice(["user", "workspace"]), default="user", show_default=True),
    option("--description", default=None),
    option("--distinct-id", default=None, help="get: evaluate for this user."),
    option("--workspace", default=None, help="get: evaluate for this workspace."),
    option("--json", "json_output", is_flag=True, default=False),
)
async def flags(
    self: AppCommand,
    action: str,
    key: str | None,
    enabled: bool,
    rollout: float | None,
    variants: str | None,
    workspaces: str | None,
    users: str | None,
    bucket_by: str,
    description: str | None,
    distinct_id: str | None,
    workspace: str | None,
    json_output: bool,
) -> None:
    """Flag database: etl flags list | get KEY | set KEY [...] | delete KEY | migrate"""
    from mappers.flags import FlagCommandError, run_flags_command

    try:
        out = run_flags_command(
            [action, *([key] if key else [])], app.etl_settings,  # type: ignore[attr-defined]
            enabled=enabled, rollout=rollout, variants=variants, workspaces=workspaces, users=users,
            bucket_by=bucket_by, description=description, distinct_id=distinct_id, workspace=workspace,
            json_output=json_output,
        )
    except FlagCommandError as exc:
        sys.stderr.write(f"etl flags: {exc}\n")
        raise SystemExit(2) from None
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
