"""The peer: Quix Streams doing our job, run as its own process (``python -m bench.peer_quix``).

Same input topic, same work as our pipeline, done by the same stage objects:
Quix consumes the raw records, and a Quix ``BatchingSink`` runs each
checkpoint's batch through our :class:`~streams.stages.NormalizeStage`
(parsing, validation, flags, redaction), hands the unified events, in the
same JSON form the normalized topic carries, to our
:class:`~streams.stages.SinkStage` for DuckDB, and stores the dead letters
through the same stage.  Only the streaming framework differs.

Batching: Quix flushes sinks per partition at each checkpoint; ``commit_every``
is set to ``batch_max_events x partitions`` messages and ``commit_interval``
to our ``flush_interval`` so a partition's batch is about the size ours writes.

Differences kept on purpose (ours is measured as deployed): ours runs two
processes with a Kafka hop between them (normalized + dlq topics, acks=all),
the peer one process with no intermediate topic.

Clock: start = the first message handed to the dataframe (after the group
join), end = the largest ``loaded_at`` in the peer's warehouse - the same end
definition ours uses.  The process prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--warehouse", required=True, type=Path)
    parser.add_argument("--messages", required=True, type=int, help="raw messages to consume")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--batch-max-events", type=int, default=5000)
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--idle-timeout", type=float, default=15.0)
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)

    import asyncio

    from quixstreams import Application, message_context
    from quixstreams.sinks import BatchingSink, SinkBatch

    from ops.inprocess import Record
    from sinks.duckdb import DuckDBSettings, DuckDBSink
    from sinks.settings import Settings
    from streams.outputs import DeadLetters, MemoryOutput
    from streams.stages import NormalizeStage, SinkStage

    settings = Settings(sinks=["duckdb"], duckdb=DuckDBSettings(path=args.warehouse))
    loop = asyncio.new_event_loop()

    # The peer has no dead-letter topic: its dead letters go straight to rejected_events.
    collected = MemoryOutput(args.partitions)
    normalize_stage = NormalizeStage(settings).start()
    sink_stage = SinkStage(
        settings, DuckDBSink(settings, args.warehouse), DeadLetters(collected, settings)
    )
    loop.run_until_complete(sink_stage.open())
    clock: dict[str, float] = {}

    def keep_record(value: bytes, key: Any, timestamp: int, headers: Any) -> Record:
        if "first" not in clock:
            clock["first"] = time.time()
        ctx = message_context()
        return Record(ctx.topic, ctx.partition, ctx.offset, timestamp, value)

    class PeerDuckDBSink(BatchingSink):
        """The same stages ours runs, batched and committed by Quix instead of Faust."""

        def write(self, batch: SinkBatch) -> None:
            normalized = normalize_stage.process([item.value for item in batch])
            loop.run_until_complete(sink_stage.deliver(normalized.events()))
            loop.run_until_complete(sink_stage.dead_letters(normalized.dead, normalize_stage.name))
            letters = [Record("dlq", 0, i, None, m[2]) for i, m in enumerate(collected.messages)]
            collected.messages.clear()
            if letters:
                loop.run_until_complete(sink_stage.store_rejected(letters))
            clock["last_write_end"] = time.time()
            clock["writes"] = clock.get("writes", 0) + 1

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.flush_interval,
        commit_every=args.batch_max_events * args.partitions,
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
    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf = sdf.apply(keep_record, metadata=True)
    sdf.sink(PeerDuckDBSink())
    started = time.time()
    app.run(count=args.messages, timeout=args.idle_timeout, collect=False)
    loop.run_until_complete(sink_stage.close())
    normalize_stage.close()

    import duckdb

    con = duckdb.connect(str(args.warehouse), read_only=True)
    try:
        rows, last = con.execute("SELECT count(*), epoch_us(max(loaded_at)) FROM events").fetchone()
        rejected = con.execute("SELECT count(*) FROM rejected_events").fetchone()[0]
    finally:
        con.close()
    first = clock.get("first", started)
    end = last / 1e6 if last is not None else clock.get("last_write_end", time.time())
    result = {
        "first_consumed": first,
        "join_seconds": round(first - started, 3),
        "last_loaded": end,
        "last_write_end": clock.get("last_write_end"),
        "seconds": round(end - first, 3),
        "writes": int(clock.get("writes", 0)),
        "warehouse_events": rows,
        "warehouse_rejected": rejected,
        "rss_mb": vm_hwm_mb(),
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0


def vm_hwm_mb() -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


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
) -> dict[str, Any]:
    """Run the peer as a subprocess (its RSS is its own) and return its measurements."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable,
        "-m",
        "bench.peer_quix",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--warehouse",
        str(warehouse),
        "--messages",
        str(messages),
        "--partitions",
        str(partitions),
        "--batch-max-events",
        str(batch_max_events),
        "--flush-interval",
        str(flush_interval),
        "--session-timeout",
        str(session_timeout),
        "--state-dir",
        str(warehouse.parent / f"{group}-state"),
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"peer failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-3000:]}"
        )
    result = orjson.loads(lines[-1])
    result["events"] = events
    result["eps"] = round(events / max(result["seconds"], 1e-6), 1)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
