"""Our warehouse sink alone: ``DuckDBSink.write`` rows/s at several batch sizes.

The events are normalized once up front and put through the same JSON round
trip the sink worker sees (``dumps_event`` on the normalize side, ``orjson.loads``
in the sink), so only the write is timed.  Each batch size writes into a fresh
warehouse file with the sink's deployed settings (the file stays open while
batches keep coming: keys ``"<size> held"``), and again with
``max_hold_seconds=0`` (the file reopened for every batch: keys ``"<size>"``)
to show what reopening costs.  One more run, ``"<largest> held, 16 MB checkpoints"``,
keeps the file open with DuckDB's own checkpoint threshold, under which some
commits carry a checkpoint: what ``ETL_DUCKDB__CHECKPOINT_THRESHOLD_MB`` saves.
And ``"<largest> held, merges always"`` runs with ``ETL_DUCKDB__MERGE_ROW_GROUPS=always``
(the default is ``when_idle``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ops.inprocess import normalize_values
from sinks.duckdb import DuckDBSettings, DuckDBSink
from sinks.settings import Settings

#: DuckDB's own checkpoint_threshold (16 MiB), in whole MB.
DUCKDB_DEFAULT_CHECKPOINT_MB = 17


def normalized_events(values: list[bytes], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` unified events of ``values``, through the normalize stage."""
    return normalize_values(
        values[: limit + limit // 10 + 100], topic="bench", timestamp_ms=1_795_000_000_000
    )[:limit]


def run_sink_alone(
    values: list[bytes], work_dir: Path, sizes: tuple[int, ...], rows_per_size: int
) -> dict[str, Any]:
    events = normalized_events(values, rows_per_size)
    results: dict[str, Any] = {}
    largest = max(sizes)
    runs: list[tuple[str, int, float, dict[str, Any]]] = [
        (str(size), size, 0.0, {}) for size in sizes
    ]
    runs += [(f"{size} held", size, 5.0, {}) for size in sizes]
    runs += [
        (
            f"{largest} held, 16 MB checkpoints",
            largest,
            5.0,
            {"checkpoint_threshold_mb": DUCKDB_DEFAULT_CHECKPOINT_MB},
        ),
        (f"{largest} held, merges always", largest, 5.0, {"merge_row_groups": "always"}),
    ]
    for key, size, hold, extra in runs:
        path = work_dir / f"sink-alone-{key.replace(' ', '-').replace(',', '')}.duckdb"
        path.unlink(missing_ok=True)
        settings = Settings(
            sinks=["duckdb"],
            duckdb=DuckDBSettings(path=path, max_hold_seconds=hold, **extra),
        )
        sink = DuckDBSink(settings, path)
        sink.open()  # tables exist before the clock starts, as in the worker
        sink.close()
        batches = [events[i : i + size] for i in range(0, len(events), size)]
        slowest = 0.0
        started = time.perf_counter()
        for batch in batches:
            began = time.perf_counter()
            sink.write(batch)
            slowest = max(slowest, time.perf_counter() - began)
        sink.close()  # timed: the checkpoint a held file still owes is part of the cost
        seconds = time.perf_counter() - started
        results[key] = {
            "rows": len(events),
            "batches": len(batches),
            "seconds": round(seconds, 3),
            "rows_per_s": round(len(events) / seconds, 1),
            "ms_per_batch": round(1000 * seconds / len(batches), 2),
            "max_ms_per_batch": round(1000 * slowest, 1),
        }
    return results
