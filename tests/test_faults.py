"""Faults of the environment against real worker processes and a real DuckDB file.

A full disk, a read-only warehouse file and directory, a lock held by
another process, and SIGINT/SIGTERM in the middle of a delivery: while the
fault holds the sink pauses (offsets stay uncommitted, nothing is
dead-lettered for it); once it is removed every valid event is in ``events``
exactly once and every dead letter in ``rejected_events``, none of them a
good event refused by the sink.  Reads keep answering while the sink writes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from etl import kafka_tools
from ops.harness.local_pipeline import LocalPipeline, tail
from ops.harness.synthetic import Generator
from ops.query import fetch
from ops.status import metric_sum, read_samples
from sinks.duckdb import wait_for_lock
from tests.conftest import warehouse_lock_held, warehouse_rows
from tests.faultfs import fill, immutable, tmpfs

FAST_RETRIES = {
    "ETL_DELIVERY__RETRY_INITIAL": "0.05",
    "ETL_DELIVERY__RETRY_MAX": "0.5",
    # The old runtime isolated (and dead-lettered) after this many failures.
    "ETL_DELIVERY__UNEXPECTED_ERROR_ATTEMPTS": "2",
    "ETL_DUCKDB__MAX_HOLD_SECONDS": "0",
}


@contextlib.contextmanager
def _pipeline(
    make_pipeline: Callable[..., LocalPipeline], warehouse: Path, **env: str
) -> Iterator[LocalPipeline]:
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    pipeline = make_pipeline(extra_env={**FAST_RETRIES, "ETL_DUCKDB__PATH": str(warehouse), **env})
    pipeline.start()
    try:
        yield pipeline
    finally:
        pipeline.stop()  # before the file system goes away


class Feed:
    """Produced messages and what must land of them."""

    def __init__(self, pipeline: LocalPipeline, seed: int) -> None:
        self.pipeline = pipeline
        self.generator = Generator(seed=seed)
        self.valid = 0
        self.rejected = 0

    def send(self, n_events: int) -> None:
        messages = list(self.generator.messages(n_events))
        self.pipeline.produce(m.value for m in messages)
        self.valid += sum(m.valid for m in messages)
        self.rejected += sum(m.rejected for m in messages)


def _sink_group_pending(pipeline: LocalPipeline) -> int:
    """Records of the normalized topic the sink has not committed yet."""
    s = pipeline.settings
    kc = kafka_tools.consumer(s)
    try:
        ends = kafka_tools.true_end_offsets(
            kc, kafka_tools.partitions(kc, s.kafka.normalized_topic)
        )
    finally:
        kc.close()
    committed = kafka_tools.committed_offsets(s, s.sink_group("duckdb"))
    return sum(end - committed.get(tp, 0) for tp, end in ends.items())


def _sink_metrics(pipeline: LocalPipeline) -> dict[Any, float]:
    return read_samples(pipeline.worker("sink:duckdb").metrics_url)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def _assert_exact(warehouse: Path, feed: Feed) -> None:
    events = warehouse_rows(warehouse, "SELECT count(*), count(DISTINCT message_id) FROM events")
    assert events == [(feed.valid, feed.valid)], "every valid event exactly once"
    rejected = warehouse_rows(
        warehouse,
        "SELECT count(*), count(*) FILTER (WHERE stage LIKE 'sink:%') FROM rejected_events",
    )
    assert rejected == [(feed.rejected, 0)], "every dead letter stored; no good event refused"


def _during_fault(pipeline: LocalPipeline, cause: str) -> None:
    """The sink says why it paused, and its offsets stay behind."""
    _wait_for(
        lambda: metric_sum(_sink_metrics(pipeline), "etl_sink_fault", cause=cause) == 1.0,
        60,
        f"etl_sink_fault{{cause={cause}}}",
    )
    time.sleep(3)  # several retries: the old runtime dead-lettered by now
    samples = _sink_metrics(pipeline)
    assert metric_sum(samples, "etl_events_out_total", outcome="dead_lettered") == 0
    assert metric_sum(samples, "etl_sink_paused_since_seconds") > 0
    assert _sink_group_pending(pipeline) > 0, "offsets must not commit past an unwritten batch"


def test_full_disk_then_grown(make_pipeline, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", size_mb=12) as fs:
        warehouse = fs / "wh.duckdb"
        with _pipeline(make_pipeline, warehouse) as pipeline:
            feed = Feed(pipeline, seed=17)
            feed.send(300)
            pipeline.wait_drained(timeout=180)
            filler = fill(fs)
            feed.send(2000)
            _during_fault(pipeline, "no_space")
            filler.unlink()  # the disk grows
            pipeline.wait_drained(timeout=180)
            _assert_exact(warehouse, feed)


@pytest.mark.parametrize("target", ["file", "directory"])
def test_read_only_warehouse_then_writable(make_pipeline, tmp_path: Path, target: str) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        warehouse = fs / "warehouse" / "wh.duckdb"
        with _pipeline(make_pipeline, warehouse) as pipeline:
            feed = Feed(pipeline, seed=18)
            feed.send(300)
            pipeline.wait_drained(timeout=180)
            victim = warehouse if target == "file" else warehouse.parent
            immutable(victim)
            feed.send(800)
            _during_fault(pipeline, "permission")
            # A shutdown during the fault: nothing is isolated or dead-lettered
            # for it, and the batch is redelivered to the next sink worker.
            sink = pipeline.worker("sink:duckdb")
            os.killpg(sink.process.pid, signal.SIGINT)  # type: ignore[union-attr]
            try:
                sink.process.wait(timeout=60)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                pytest.fail("the sink worker did not stop:\n" + tail(sink.log_path, 6000))
            log = sink.log_path.read_text(errors="replace")
            assert "isolating bad events" not in log
            assert "Traceback" not in log, log[log.find("Traceback") - 500 :][:4000]
            pipeline.workers.remove(sink)
            immutable(victim, False)
            pipeline.start(["sink:duckdb"])
            pipeline.wait_drained(timeout=180)
            _assert_exact(warehouse, feed)


def test_lock_held_by_another_process(make_pipeline, tmp_path: Path) -> None:
    warehouse = tmp_path / "wh.duckdb"
    with _pipeline(make_pipeline, warehouse) as pipeline:
        feed = Feed(pipeline, seed=19)
        feed.send(300)
        pipeline.wait_drained(timeout=180)
        with warehouse_lock_held(warehouse, 12):
            feed.send(800)
            _during_fault(pipeline, "lock")
        pipeline.wait_drained(timeout=180)
        _assert_exact(warehouse, feed)


def _dlq_end(pipeline: LocalPipeline) -> int:
    s = pipeline.settings
    kc = kafka_tools.consumer(s)
    try:
        ends = kafka_tools.true_end_offsets(kc, kafka_tools.partitions(kc, s.kafka.dlq_topic))
    finally:
        kc.close()
    return sum(ends.values())


def test_interrupted_replay_exits_130_and_resumes(make_pipeline, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        warehouse = fs / "wh.duckdb"
        with _pipeline(make_pipeline, warehouse) as pipeline:
            feed = Feed(pipeline, seed=20)
            feed.send(600)
            pipeline.wait_drained(timeout=180)
            pipeline.stop()  # the replay is the only writer now
            con = wait_for_lock(warehouse, 30, read_only=False)
            try:
                con.execute("DELETE FROM events")  # what the replay must bring back
            finally:
                con.close()
            dlq_before = _dlq_end(pipeline)
            immutable(warehouse)
            replay = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ops.cli",
                    "replay",
                    "--source",
                    "normalized",
                    "--no-progress",
                ],
                env={**pipeline.env, **FAST_RETRIES},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(12)  # it opens, reads and meets the read-only file again and again
            assert replay.poll() is None, replay.communicate()
            replay.send_signal(signal.SIGINT)
            out, err = replay.communicate(timeout=60)
            assert replay.returncode == 130, err[-3000:]
            last = err.strip().splitlines()[-1]
            assert "interrupted; run the same command again to resume at partition" in last, err
            assert "Traceback" not in err
            assert "isolating" not in err
            assert _dlq_end(pipeline) == dlq_before, "an interrupt dead-letters nothing"
            immutable(warehouse, False)
            again = pipeline.cli("replay", "--source", "normalized", "--no-progress", "--json")
            assert again.returncode == 0, again.stderr[-3000:]
            assert "resuming replay" in again.stderr
            doc = orjson.loads(again.stdout.strip().splitlines()[-1])
            assert doc["resumed"] is True
            _assert_exact(warehouse, feed)


def test_count_query_answers_fast_while_the_sink_writes(make_pipeline, tmp_path: Path) -> None:
    warehouse = tmp_path / "wh.duckdb"
    # The default hold time: the sink keeps the lock under load.
    with _pipeline(make_pipeline, warehouse, ETL_DUCKDB__MAX_HOLD_SECONDS="5") as pipeline:
        feed = Feed(pipeline, seed=21)
        feed.send(300)
        pipeline.wait_drained(timeout=180)
        stop = threading.Event()

        def produce() -> None:
            while not stop.is_set():
                feed.send(400)
                time.sleep(0.2)

        feeder = threading.Thread(target=produce, daemon=True)
        feeder.start()
        durations: list[float] = []
        counts: list[int] = []
        try:
            started = time.monotonic()
            while time.monotonic() - started < 25:
                t0 = time.monotonic()
                _, rows = fetch("SELECT count(*) FROM events", warehouse, timeout=30)
                durations.append(time.monotonic() - t0)
                counts.append(int(rows[0][0]))
                time.sleep(0.5)
            cli = pipeline.cli(
                "query",
                "--warehouse",
                str(warehouse),
                "--format",
                "json",
                "SELECT count(*) AS n FROM events",
            )
            assert cli.returncode == 0, cli.stderr
            assert "Traceback" not in cli.stderr
        finally:
            stop.set()
            feeder.join(timeout=60)
        p95 = statistics.quantiles(durations, n=20)[-1]
        median = statistics.median(durations)
        print(
            f"count query during writes: n={len(durations)} p50={median:.3f}s "
            f"p95={p95:.3f}s max={max(durations):.3f}s"
        )
        assert p95 < 2.0, durations
        assert counts == sorted(counts) and counts[-1] > counts[0], "writes kept going"
        pipeline.wait_drained(timeout=240)
        _assert_exact(warehouse, feed)
