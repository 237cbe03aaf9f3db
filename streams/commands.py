"""``etl`` commands beside Faust's own ``worker``: demo, query.

They are registered on the one app, so ``etl --help`` lists them with Faust's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson
from faust.cli import AppCommand, option

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
    option("--warehouse", type=click.Path(dir_okay=False, path_type=Path), default=None,
           help="DuckDB warehouse file (default: ETL_DUCKDB__PATH)."),
    option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True),
)
async def query(self: AppCommand, warehouse: Path | None, fmt: str) -> None:
    """Run read-only SQL against the embedded warehouse: etl query "SELECT ..." """
    from etl.query import run_query

    sql = " ".join(self.args) if self.args else ""
    if not sql.strip():
        raise self.UsageError("give the SQL as an argument: etl query \"SELECT count(*) FROM events\"")
    run_query(sql, warehouse, fmt)
