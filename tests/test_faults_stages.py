"""Faults of the environment through the real stages and a real DuckDB file (in process).

The sink stage, its deliverer and the DuckDB sink are the worker's own
objects; the warehouse lives on a real tmpfs that the tests fill up or make
immutable.  Only the Kafka output is a memory of what would be produced
(the end-to-end variants with worker processes are in test_faults.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import socket
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from ops.harness.synthetic import Generator
from ops.inprocess import normalize_values
from sinks.base import environment_cause
from sinks.duckdb import DuckDBSettings, DuckDBSink
from sinks.settings import Settings
from streams import metrics
from streams.delivery import DeliveryInterrupted
from streams.outputs import DeadLetters, MemoryOutput
from streams.stages import SinkStage
from tests.conftest import warehouse_rows
from tests.faultfs import fill, immutable, tmpfs


def _settings(path: Path) -> Settings:
    return Settings(
        duckdb=DuckDBSettings(path=path, max_hold_seconds=0),
        sinks=["duckdb"],
        delivery={"retry_initial": 0.05, "retry_max": 0.3, "unexpected_error_attempts": 2},
    )


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    messages = [m for m in Generator(seed=seed, malformed_rate=0, batch_rate=0).messages(n)]
    events = normalize_values([m.value for m in messages])
    assert len(events) == n
    return events


def _stage(path: Path) -> tuple[SinkStage, MemoryOutput]:
    settings = _settings(path)
    output = MemoryOutput()
    return SinkStage(settings, DuckDBSink(settings), DeadLetters(output, settings)), output


def _fault_gauge(cause: str) -> float:
    return metrics.SINK_FAULT.labels("duckdb", cause)._value.get()


async def _paused_then_resumed(
    stage: SinkStage, output: MemoryOutput, work: Any, undo: Any, cause: str
) -> None:
    """Run ``work`` while the fault holds: it waits, dead-letters nothing; then ``undo`` it."""
    task = asyncio.ensure_future(work)
    await asyncio.sleep(3.0)
    assert not task.done(), "the write must wait while the environment is broken"
    assert output.messages == [], "nothing may be dead-lettered for a fault of the environment"
    assert _fault_gauge(cause) == 1.0, f"etl_sink_fault{{cause={cause}}} must say why"
    undo()
    await asyncio.wait_for(task, timeout=60)
    assert output.messages == []
    assert _fault_gauge(cause) == 0.0


def test_full_disk_pauses_and_loses_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", size_mb=6) as fs:
        path = fs / "wh.duckdb"
        stage, output = _stage(path)
        first, second = _events(200, 1), _events(1500, 2)

        async def run() -> None:
            await stage.open()
            await stage.deliver(first)
            filler = fill(fs)
            await _paused_then_resumed(
                stage, output, stage.deliver(second), filler.unlink, "no_space"
            )
            await stage.close()

        asyncio.run(run())
        rows = warehouse_rows(path, "SELECT count(*), count(DISTINCT message_id) FROM events")
        assert rows == [(1700, 1700)]


@pytest.mark.parametrize("target", ["file", "directory"])
def test_read_only_warehouse_pauses_and_loses_nothing(tmp_path: Path, target: str) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        directory = fs / "warehouse"
        directory.mkdir()
        path = directory / "wh.duckdb"
        stage, output = _stage(path)
        first, second = _events(100, 3), _events(300, 4)
        victim = path if target == "file" else directory

        async def run() -> None:
            await stage.open()
            await stage.deliver(first)
            await stage.idle()  # the lock and the connection are given back
            immutable(victim)
            await _paused_then_resumed(
                stage, output, stage.deliver(second), lambda: immutable(victim, False), "permission"
            )
            await stage.close()

        asyncio.run(run())
        rows = warehouse_rows(path, "SELECT count(*), count(DISTINCT message_id) FROM events")
        assert rows == [(400, 400)]


def test_a_dead_letter_that_cannot_be_stored_is_retried_not_dropped(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        path = fs / "wh.duckdb"
        stage, output = _stage(path)
        letters = [
            {
                "rejection_id": f"r{i}",
                "reason": "invalid_json",
                "error": "not JSON",
                "stage": "normalize",
                "raw_payload": "{",
                "raw_encoding": "utf-8",
                "raw_size": 1,
                "source_topic": "raw",
                "source_partition": 0,
                "source_offset": i,
                "rejected_at": "2026-11-20T10:00:00Z",
            }
            for i in range(5)
        ]

        class Rec:
            def __init__(self, doc: dict[str, Any], offset: int) -> None:
                self.value, self.topic, self.partition, self.offset = (
                    orjson.dumps(doc),
                    "dlq",
                    0,
                    offset,
                )

        async def run() -> None:
            await stage.open()
            immutable(path)
            await _paused_then_resumed(
                stage,
                output,
                stage.store_rejected([Rec(d, i) for i, d in enumerate(letters)]),
                lambda: immutable(path, False),
                "permission",
            )
            await stage.close()

        asyncio.run(run())
        rows = warehouse_rows(
            path, "SELECT rejection_id, raw_payload FROM rejected_events ORDER BY 1"
        )
        assert rows == [(f"r{i}", "{") for i in range(5)]


def test_a_bad_event_is_still_isolated_after_a_good_probe(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    stage, output = _stage(path)
    events = _events(50, 5)
    events[17] = {**events[17], "timestamp": "not a time at all"}  # the warehouse cannot cast it

    async def run() -> None:
        await stage.open()
        await stage.deliver(events)
        await stage.close()

    asyncio.run(run())
    assert len(output.messages) == 1
    letter = orjson.loads(output.messages[0][2])
    assert letter["reason"] == "sink_rejected"
    assert letter["message_id"] == events[17]["message_id"]
    assert warehouse_rows(path, "SELECT count(*) FROM events") == [(49,)]


def test_stopping_ends_the_retries_without_dead_letters(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        path = fs / "wh.duckdb"
        stage, output = _stage(path)

        async def run() -> None:
            await stage.open()
            immutable(path)
            task = asyncio.ensure_future(stage.deliver(_events(100, 6)))
            await asyncio.sleep(2.0)
            assert not task.done()
            stage.stop()
            with pytest.raises(DeliveryInterrupted):
                await asyncio.wait_for(task, timeout=5)
            immutable(path, False)
            await stage.close()

        asyncio.run(run())
        assert output.messages == []
        assert warehouse_rows(path, "SELECT count(*) FROM events") == [(0,)]


def test_environment_causes_of_real_errors(tmp_path: Path) -> None:
    assert environment_cause(OSError(errno.ENOSPC, "No space left on device")) == "no_space"
    pool = concurrent.futures.ThreadPoolExecutor()
    pool.shutdown()
    with pytest.raises(RuntimeError) as shut:
        pool.submit(print)
    assert environment_cause(shut.value) == "shutdown"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError) as refused:
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert environment_cause(refused.value) == "connection"
    holder = duckdb.connect(str(tmp_path / "locked.duckdb"))
    try:
        import subprocess
        import sys

        code = (
            "import duckdb,sys\n"
            "try: duckdb.connect(sys.argv[1])\n"
            "except Exception as e: print(type(e).__name__, e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "locked.duckdb")],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    finally:
        holder.close()
    assert "lock" in out.lower()
    assert environment_cause(duckdb.IOException(out)) == "lock"
    # Content errors are not the environment's.
    with pytest.raises(duckdb.Error) as content:
        duckdb.connect().execute("SELECT CAST('x' AS TIMESTAMP)")
    assert DuckDBSink(_settings(tmp_path / "w.duckdb")).environment_cause(content.value) is None
