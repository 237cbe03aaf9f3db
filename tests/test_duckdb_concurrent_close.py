"""Closing the DuckDB sink while a write still runs in another thread.

On shutdown the worker closes the sink from the event loop, and a write it
stopped waiting for may still be running in a thread: DuckDB refuses to close
a connection that is busy (``ResourceInUseException``), and a close between
two statements would cut the write short.  The close waits for the write.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ops.harness.synthetic import Generator
from ops.inprocess import normalize_values
from sinks.duckdb import DuckDBSettings, DuckDBSink
from sinks.settings import Settings
from tests.conftest import warehouse_rows


def test_close_waits_for_the_write_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    settings = Settings(duckdb=DuckDBSettings(path=path, max_hold_seconds=3600))
    values = [m.value for m in Generator(seed=4, malformed_rate=0, batch_rate=0).messages(2100)]
    events = normalize_values(values, settings)[:2000]
    batch = [{**e, "message_id": f"{e['message_id']}-{c}"} for c in range(15) for e in events]
    sink = DuckDBSink(settings)
    sink.open()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            sink.write(batch)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.2)  # the write (30,000 events) is under way
    sink.close()
    assert not writer.is_alive(), "close returned while the write was still running"
    writer.join()
    assert failures == []
    assert warehouse_rows(path, "SELECT count(*) FROM events") == [(len(batch),)]
