"""The normalize stage alone, on one core: ``NormalizeStage.process`` + ``envelopes``.

The same stage object every path runs, fed the workload's raw values as
records in batches of the worker's size, with the workers' collector settings.
No broker, no framework: what one core can normalize, and so how much of the
worker's time is the stage and how much is the runtime around it.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from etl.collector import tune_for_batches
from ops.inprocess import Record
from streams.roles import NORMALIZE_BATCH_RECORDS
from streams.stages import NormalizeStage

#: The Kafka timestamp the records carry (a fixed instant: results do not depend on the day).
RECORD_TIME_MS = 1_795_000_000_000


def run_normalize_alone(
    values: list[bytes], settings: Any, limit: int = 200_000, passes: int = 3
) -> dict[str, Any]:
    """Events/s of the normalize stage over the first ``limit`` values; the best of ``passes``."""
    sample = values[:limit]
    records = [
        Record("bench-raw", i % 2, i, RECORD_TIME_MS + i // 100, value)
        for i, value in enumerate(sample)
    ]
    stage = NormalizeStage(settings)
    thresholds = gc.get_threshold()
    tune_for_batches()
    try:
        stage.process(records[:1000])  # warm caches (flag definitions, compiled checks)
        best = float("inf")
        normalized = rejected = 0
        for _ in range(passes):
            normalized = rejected = 0
            started = time.process_time()
            for i in range(0, len(records), NORMALIZE_BATCH_RECORDS):
                batch = stage.process(records[i : i + NORMALIZE_BATCH_RECORDS])
                stage.envelopes(batch, 2)
                normalized += batch.normalized
                rejected += len(batch.dead)
            best = min(best, time.process_time() - started)
    finally:
        stage.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    return {
        "messages": len(records),
        "normalized": normalized,
        "rejected": rejected,
        "cpu_seconds": round(best, 3),
        "us_per_message": round(1e6 * best / len(records), 2),
        "eps": round(len(records) / best, 1),
        "clock": "process CPU time (one thread), best of "
        f"{passes} passes over {len(records):,} messages",
    }
