"""Warehouse sinks alone: ``write`` rows/s per sink and batch size.

``python -m bench.warehouses [--events N] [--sizes 500,2000,5000]
[--only duckdb,snowflake,bigquery]``

In process, each sink's real ``write`` against its local stand-in: DuckDB (a
file), Snowflake (fakesnow server through ``snowflake-connector-python``) and
BigQuery (bqemulator through ``google-cloud-bigquery``).  Events come from the
seeded synthetic generator, normalized once and put through the same JSON round
trip the sink worker sees, so only the write is timed.  Every batch size writes
into a fresh schema/dataset whose tables exist before the clock starts (as in a
worker).  ``again`` times a second write of every batch (redelivery: MERGE
updates in place).  Emulator numbers measure our client path and SQL, not a
real warehouse's server.  Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.sinkbench import normalized_events
from ops.harness.synthetic import Generator
from sinks.base import Sink
from sinks.bigquery import BigQuerySettings
from sinks.duckdb import DuckDBSettings
from sinks.settings import Settings


def _time_writes(sink: Sink, events: list[dict[str, Any]], size: int) -> dict[str, Any]:
    batches = [events[i : i + size] for i in range(0, len(events), size)]
    started = time.perf_counter()
    for batch in batches:
        sink.write(batch)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for batch in batches:
        sink.write(batch)
    again = time.perf_counter() - started
    return {
        "rows": len(events),
        "batches": len(batches),
        "seconds": round(first, 3),
        "rows_per_s": round(len(events) / first, 1),
        "ms_per_batch": round(1000 * first / len(batches), 1),
        "again_rows_per_s": round(len(events) / again, 1),
    }


@contextlib.contextmanager
def duckdb_sinks(work_dir: Path) -> Iterator[Callable[[], Sink]]:
    from sinks.duckdb import DuckDBSink

    def make() -> Sink:
        path = work_dir / f"bench-{uuid.uuid4().hex[:8]}.duckdb"
        return DuckDBSink(Settings(sinks=["duckdb"], duckdb=DuckDBSettings(path=path)), path)

    yield make


@contextlib.contextmanager
def snowflake_sinks(work_dir: Path) -> Iterator[Callable[[], Sink]]:
    from sinks.snowflake import SnowflakeSink
    from tests.emulators.snowflake import FakeSnowflakeServer

    with FakeSnowflakeServer(mode="process", log_dir=work_dir / "fakesnow") as server:

        def make() -> Sink:
            kwargs = {
                **server.connection_kwargs(),
                "database": "BENCH",
                "schema": f"S_{uuid.uuid4().hex[:8].upper()}",
                "network_timeout": 60,
            }
            return SnowflakeSink(Settings(), connect_kwargs=kwargs)

        yield make


@contextlib.contextmanager
def bigquery_sinks(work_dir: Path) -> Iterator[Callable[[], Sink]]:
    from sinks.bigquery import BigQuerySink
    from tests.emulators.bigquery import BigQueryEmulator

    with BigQueryEmulator(project="local", log_level="warning") as emulator:

        def make() -> Sink:
            settings = BigQuerySettings(
                project="local",
                dataset=f"bench_{uuid.uuid4().hex[:8]}",
                api_endpoint=emulator.endpoint,
            )
            return BigQuerySink(Settings(bigquery=settings))

        yield make


FACTORIES = {"duckdb": duckdb_sinks, "snowflake": snowflake_sinks, "bigquery": bigquery_sinks}


def run(
    events: list[dict[str, Any]], sizes: tuple[int, ...], only: tuple[str, ...], work_dir: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in only:
        started = time.perf_counter()
        with FACTORIES[name](work_dir) as make:
            results[name] = {"emulator_start_s": round(time.perf_counter() - started, 1)}
            for size in sizes:
                sink = make()
                sink.open()  # tables exist before the clock starts, as in a worker
                try:
                    results[name][str(size)] = _time_writes(sink, events, size)
                finally:
                    sink.close()
                r = results[name][str(size)]
                print(
                    f"{name:<10} batch {size:>6}: {r['rows_per_s']:>10.0f} rows/s  "
                    f"{r['ms_per_batch']:>8.1f} ms/batch  "
                    f"(again {r['again_rows_per_s']:.0f} rows/s)",
                    flush=True,
                )
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--sizes", default="500,2000,5000", help="Batch sizes, comma-separated.")
    parser.add_argument(
        "--only", default="duckdb,snowflake,bigquery", help="Sinks, comma-separated."
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(FACTORIES)
    if unknown:
        parser.error(f"unknown sinks: {', '.join(sorted(unknown))}")
    # No malformed messages: every generated event reaches the sink.
    values = [m.value for m in Generator(seed=args.seed, malformed_rate=0.0).messages(args.events)]
    events = normalized_events(values, args.events)
    with tempfile.TemporaryDirectory(prefix="bench-warehouses-") as tmp:
        results = run(events, sizes, only, Path(tmp))
    summary = {
        "bench": "warehouses",
        "events": len(events),
        "sizes": list(sizes),
        "results": results,
    }
    print(orjson.dumps(summary).decode())
    return summary


if __name__ == "__main__":
    main()
