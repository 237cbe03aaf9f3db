"""The peer: Quix Streams doing our job with our stages (``python -m bench.peer_quix``).

Same input topic, same work as our pipeline, done by the same stage objects;
only the streaming framework differs.  Two layouts, both measured in one run
of ``python -m bench`` (the faster one is the peer the headline compares to):

* ``single`` - one process: a Quix ``BatchingSink`` runs each checkpoint's
  batch through our :class:`~streams.stages.NormalizeStage` (parsing,
  validation, flags, redaction), hands the unified events, in the JSON form
  the normalized topic carries, to our :class:`~streams.stages.SinkStage` for
  DuckDB, and stores the dead letters through the same stage;
* ``split`` - our topology, two processes: a normalize app (raw ->
  NormalizeStage -> envelopes and dead letters to the peer's own normalized
  and dead-letter topics, through Quix's producer, flushed before Quix
  commits) and a sink app (those topics -> ``SinkStage.receive`` /
  ``store_rejected`` -> DuckDB), started together.

Batching: Quix flushes sinks per partition at each checkpoint; ``commit_every``
is ``batch_max_events x partitions`` messages and ``commit_interval`` our
``flush_interval``, so a batch is bounded by about the time ours waits.

Clock: start = the first raw message handed to the (normalize) app's
dataframe, after its group join; end = the largest ``loaded_at`` in the
peer's warehouse - the definitions ours uses.  Each process prints one JSON
line on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.proc import ROOT, contender_env, cpu_seconds, vm_hwm_mb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layout", choices=("single", "normalize", "sink"), default="single")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True, help="the raw topic (single, normalize)")
    parser.add_argument("--group", required=True)
    parser.add_argument("--warehouse", type=Path, help="the DuckDB file (single, sink)")
    parser.add_argument("--messages", type=int, default=0, help="raw messages to consume")
    parser.add_argument("--events", type=int, default=0, help="sink: stop once this many landed")
    parser.add_argument("--normalized-topic", help="split layout: the peer's normalized topic")
    parser.add_argument("--dlq-topic", help="split layout: the peer's dead-letter topic")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--batch-max-events", type=int, default=5000)
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--idle-timeout", type=float, default=15.0)
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    run = {"single": _single, "normalize": _normalize_app, "sink": _sink_app}[args.layout]
    # The same collector settings as our workers: the comparison is of runtimes, not of GC.
    from etl.collector import tune_for_batches

    tune_for_batches()
    result = run(args) | {"rss_mb": vm_hwm_mb()}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0


def _settings(args: argparse.Namespace) -> Any:
    from etl.config import KafkaSettings
    from sinks.duckdb import DuckDBSettings
    from sinks.settings import Settings

    kafka = KafkaSettings(
        bootstrap_servers=args.bootstrap,
        partitions=args.partitions,
        raw_topic=args.topic,
        normalized_topic=args.normalized_topic or KafkaSettings().normalized_topic,
        dlq_topic=args.dlq_topic or KafkaSettings().dlq_topic,
    )
    duckdb = DuckDBSettings(path=args.warehouse) if args.warehouse else DuckDBSettings()
    return Settings(kafka=kafka, sinks=["duckdb"], duckdb=duckdb)


def _application(args: argparse.Namespace, commit_every: int) -> Any:
    from quixstreams import Application

    return Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.flush_interval,
        commit_every=commit_every,
        auto_create_topics=False,
        use_changelog_topics=False,
        loglevel="WARNING",
        state_dir=args.state_dir,
        # librdkafka's default 45 s session makes this broker hold the first
        # join for ~23 s; use the session timeout our workers use.
        consumer_extra_config={
            "session.timeout.ms": int(args.session_timeout * 1000),
            "heartbeat.interval.ms": 1000,
        },
    )


def _records(batch: Any) -> list[Any]:
    from ops.inprocess import Record

    return [
        Record(
            batch.topic,
            batch.partition,
            item.offset,
            item.timestamp,
            item.value,
            tuple(item.headers or ()),
        )
        for item in batch
    ]


class QuixOutput:
    """Our :class:`~streams.outputs.Output` through Quix's producer: returns once all are acked."""

    def __init__(self, producer: Any, partitions: int) -> None:
        self.producer = producer
        self._partitions = partitions

    async def partitions(self, topic: str) -> int:
        return self._partitions

    async def send(self, messages: list[Any]) -> None:
        for topic, key, value, partition, headers in messages:
            self.producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
        remaining = self.producer.flush(60)
        if remaining:
            raise RuntimeError(f"peer: {remaining} messages not acknowledged")


def _single(args: argparse.Namespace) -> dict[str, Any]:
    """One process: raw -> NormalizeStage -> (JSON round trip) -> SinkStage -> DuckDB."""
    import asyncio

    from quixstreams.sinks import BatchingSink, SinkBatch

    from ops.inprocess import Record
    from sinks.duckdb import DuckDBSink
    from streams.outputs import DeadLetters, MemoryOutput
    from streams.stages import NormalizeStage, SinkStage

    settings = _settings(args)
    loop = asyncio.new_event_loop()
    # One process has no dead-letter topic: its dead letters go straight to rejected_events.
    collected = MemoryOutput(args.partitions)
    normalize_stage = NormalizeStage(settings).start()
    sink_stage = SinkStage(
        settings, DuckDBSink(settings, args.warehouse), DeadLetters(collected, settings)
    )
    loop.run_until_complete(sink_stage.open())
    clock: dict[str, float] = {}

    class PeerDuckDBSink(BatchingSink):
        """The same stages ours runs, batched and committed by Quix instead of Faust."""

        def write(self, batch: SinkBatch) -> None:
            normalized = normalize_stage.process(_records(batch))
            loop.run_until_complete(sink_stage.deliver(normalized.events()))
            loop.run_until_complete(sink_stage.dead_letters(normalized.dead, normalize_stage.name))
            letters = [Record("dlq", 0, i, None, m[2]) for i, m in enumerate(collected.messages)]
            collected.messages.clear()
            if letters:
                loop.run_until_complete(sink_stage.store_rejected(letters))
            _wrote(clock)

    app = _application(args, args.batch_max_events * args.partitions)
    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf = sdf.apply(_first_seen(clock))
    sdf.sink(PeerDuckDBSink())
    started, cpu_at_start = time.time(), cpu_seconds() or 0.0
    app.run(count=args.messages, timeout=args.idle_timeout, collect=False)
    loop.run_until_complete(sink_stage.close())
    normalize_stage.close()
    return _timed(clock, started, args.warehouse) | {"cpu_seconds": _cpu_used(clock, cpu_at_start)}


def _first_seen(clock: dict[str, float]) -> Any:
    def first_seen(value: bytes) -> bytes:
        if "first" not in clock:
            clock["first"] = time.time()
            clock["cpu_first"] = cpu_seconds() or 0.0
        return value

    return first_seen


def _wrote(clock: dict[str, float]) -> None:
    """A write ended: the clock's end, and this process's CPU time so far."""
    clock["last_write_end"] = time.time()
    clock["cpu_last_write"] = cpu_seconds() or 0.0
    clock["writes"] = clock.get("writes", 0) + 1


def _cpu_used(clock: dict[str, float], at_start: float) -> float | None:
    """CPU seconds from the first record (or ``at_start``) to the end of the last write."""
    if "cpu_last_write" not in clock:
        return None
    return round(clock["cpu_last_write"] - clock.get("cpu_first", at_start), 2)


def _normalize_app(args: argparse.Namespace) -> dict[str, Any]:
    """Split layout, process 1: raw -> NormalizeStage -> normalized + dead-letter topics."""
    import asyncio

    from quixstreams.sinks import BatchingSink, SinkBatch

    from streams.outputs import DeadLetters
    from streams.stages import NormalizeStage

    settings = _settings(args)
    loop = asyncio.new_event_loop()
    stage = NormalizeStage(settings).start()
    app = _application(args, args.batch_max_events * args.partitions)
    output = QuixOutput(app.get_producer(), args.partitions)
    dead_letters = DeadLetters(output, settings)
    clock: dict[str, float] = {}

    class NormalizedTopicSink(BatchingSink):
        """What our normalize agent does per batch: process, envelopes, dead letters, all acked."""

        def write(self, batch: SinkBatch) -> None:
            normalized = stage.process(_records(batch))
            loop.run_until_complete(output.send(stage.envelopes(normalized, args.partitions)))
            loop.run_until_complete(dead_letters(normalized.dead, stage.name))
            _wrote(clock)

    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf = sdf.apply(_first_seen(clock))
    sdf.sink(NormalizedTopicSink())
    started, cpu_at_start = time.time(), cpu_seconds() or 0.0
    app.run(count=args.messages, timeout=args.idle_timeout, collect=False)
    output.producer.flush(60)
    stage.close()
    first = clock.get("first", started)
    return {
        "first_consumed": first,
        "join_seconds": round(first - started, 3),
        "last_write_end": clock.get("last_write_end"),
        "writes": int(clock.get("writes", 0)),
        "cpu_seconds": _cpu_used(clock, cpu_at_start),
    }


def _sink_app(args: argparse.Namespace) -> dict[str, Any]:
    """Split layout, process 2: normalized + dead-letter topics -> SinkStage -> DuckDB."""
    import asyncio

    from quixstreams.sinks import BatchingSink, SinkBatch

    from sinks.duckdb import DuckDBSink
    from streams.outputs import DeadLetters, MemoryOutput
    from streams.stages import SinkStage

    settings = _settings(args)
    loop = asyncio.new_event_loop()
    # The sink's own dead letters (unreadable records) would go to the DLQ; none are expected.
    stage = SinkStage(
        settings, DuckDBSink(settings, args.warehouse), DeadLetters(MemoryOutput(), settings)
    )
    loop.run_until_complete(stage.open())
    clock: dict[str, float] = {}
    landed = {"n": 0}
    # Quix counts messages, not the events inside envelopes: a count bound of
    # batch_max_events / envelope_size made ~1,000-event writes (envelopes are
    # rarely full).  Let the commit interval bound the batch instead, as our
    # flush_interval does; at most one interval of input is held.
    app = _application(args, args.batch_max_events * args.partitions)

    def count(n: int) -> None:
        landed["n"] += n
        _wrote(clock)
        if args.events and landed["n"] >= args.events:
            app.stop()

    class EventsSink(BatchingSink):
        def write(self, batch: SinkBatch) -> None:
            count(loop.run_until_complete(stage.receive(_records(batch))))

    class RejectedSink(BatchingSink):
        def write(self, batch: SinkBatch) -> None:
            records = _records(batch)
            loop.run_until_complete(stage.store_rejected(records))
            count(len(records))

    for name, sink in ((args.normalized_topic, EventsSink()), (args.dlq_topic, RejectedSink())):
        topic = app.topic(name, value_deserializer="bytes", key_deserializer="bytes")
        app.dataframe(topic).apply(_first_seen(clock)).sink(sink)
    started, cpu_at_start = time.time(), cpu_seconds() or 0.0
    app.run(timeout=args.idle_timeout, collect=False)
    loop.run_until_complete(stage.close())
    return _timed(clock, started, args.warehouse) | {"cpu_seconds": _cpu_used(clock, cpu_at_start)}


def _timed(clock: dict[str, float], started: float, warehouse: Path) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows, last = con.execute("SELECT count(*), epoch_us(max(loaded_at)) FROM events").fetchone()
        rejected = con.execute("SELECT count(*) FROM rejected_events").fetchone()[0]
    finally:
        con.close()
    first = clock.get("first", started)
    end = last / 1e6 if last is not None else clock.get("last_write_end", time.time())
    return {
        "first_consumed": first,
        "join_seconds": round(first - started, 3),
        "last_loaded": end,
        "last_write_end": clock.get("last_write_end"),
        "seconds": round(end - first, 3),
        "writes": int(clock.get("writes", 0)),
        "warehouse_events": rows,
        "warehouse_rejected": rejected,
    }


def run_peer(
    bootstrap: str,
    topic: str,
    group: str,
    warehouse: Path,
    messages: int,
    events: int,
    partitions: int,
    batch_max_events: int,
    flush_interval: float,
    session_timeout: float = 10.0,
    timeout: float = 900.0,
    layout: str = "single",
) -> dict[str, Any]:
    """Run the peer as subprocesses (their RSS is their own) and return its measurements.

    ``layout="single"``: one process does it all; ``"split"``: a normalize app
    and a sink app, started together, with their own normalized and
    dead-letter topics between them - our topology.
    """
    common = [
        "--bootstrap", bootstrap,
        "--topic", topic,
        "--partitions", str(partitions),
        "--batch-max-events", str(batch_max_events),
        "--flush-interval", str(flush_interval),
        "--session-timeout", str(session_timeout),
    ]  # fmt: skip
    if layout == "single":
        result = _wait(
            _spawn(
                [
                    *common,
                    "--layout",
                    "single",
                    "--group",
                    group,
                    "--warehouse",
                    str(warehouse),
                    "--messages",
                    str(messages),
                    "--state-dir",
                    str(warehouse.parent / f"{group}-state"),
                ]  # fmt: skip
            ),
            timeout,
        )
        result["processes"] = 1
        result["rss_mb"] = {"quix": result["rss_mb"]}
        result["cpu_seconds"] = {"quix": result["cpu_seconds"]}
    else:
        normalized, dlq = f"{topic}-quix-normalized", f"{topic}-quix-dlq"
        _create_topics(bootstrap, [normalized, dlq], partitions)
        split = ["--normalized-topic", normalized, "--dlq-topic", dlq]
        sink = _spawn(
            [
                *common,
                *split,
                "--layout",
                "sink",
                "--group",
                f"{group}-sink",
                "--warehouse",
                str(warehouse),
                "--events",
                str(events),
                "--idle-timeout",
                "120",
                "--state-dir",
                str(warehouse.parent / f"{group}-sink-state"),
            ]  # fmt: skip
        )
        normalize = _spawn(
            [
                *common,
                *split,
                "--layout",
                "normalize",
                "--group",
                f"{group}-normalize",
                "--messages",
                str(messages),
                "--state-dir",
                str(warehouse.parent / f"{group}-normalize-state"),
            ]  # fmt: skip
        )
        norm = _wait(normalize, timeout)
        result = _wait(sink, timeout)
        # Same clock as ours: the normalize app's first record to the last warehouse write.
        result["first_consumed"] = norm["first_consumed"]
        result["join_seconds"] = norm["join_seconds"]
        result["seconds"] = round(result["last_loaded"] - norm["first_consumed"], 3)
        result["normalize_writes"] = norm["writes"]
        result["processes"] = 2
        result["rss_mb"] = {"quix-normalize": norm["rss_mb"], "quix-sink": result["rss_mb"]}
        result["cpu_seconds"] = {
            "quix-normalize": norm["cpu_seconds"],
            "quix-sink": result["cpu_seconds"],
        }
    result["layout"] = layout
    result["events"] = events
    result["eps"] = round(events / max(result["seconds"], 1e-6), 1)
    return result


def _create_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    for future in futures.values():
        future.result(30)


def _spawn(args: list[str]) -> Any:
    import subprocess
    import tempfile

    env = contender_env()
    # stderr to a file: a chatty process must not block on a full pipe while we wait on another.
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.peer_quix", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=errors,
    )
    proc.errors = errors  # type: ignore[attr-defined]
    return proc


def _wait(proc: Any, timeout: float) -> dict[str, Any]:
    import subprocess

    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    proc.errors.seek(0)
    err = proc.errors.read()
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"peer failed (exit {proc.returncode}): {err.decode(errors='replace')[-3000:]}"
        )
    return orjson.loads(lines[-1])


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
