"""The peer: Quix Streams doing our job, run as its own process (``python -m bench.peer_quix``).

Same input topic, same work per message as our pipeline: ``mappers.normalize.
Normalizer`` parses, validates (the same pydantic models) and normalizes; each
unified event goes through the same JSON round trip ours makes over the
normalized topic (``dumps_event`` -> ``orjson.loads``), and rejections become
the same dead-letter records.  A Quix ``BatchingSink`` then hands each
checkpoint's batch to *our* ``sinks.duckdb.DuckDBSink.write`` (and
``write_rejected``), so only the streaming framework differs.

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
    parser.add_argument("--outputs", required=True, type=int, help="normalizer outputs (events + rejections) to expect")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--batch-max-events", type=int, default=5000)
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--idle-timeout", type=float, default=15.0)
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)

    from quixstreams import Application, message_context
    from quixstreams.sinks import BatchingSink, SinkBatch

    from etl.config import DuckDBSettings, Settings
    from mappers.deadletter import dead_letter, dumps_dead_letter
    from mappers.normalize import Normalizer, dumps_event
    from sinks.duckdb import DuckDBSink

    settings = Settings(sinks=["duckdb"], duckdb=DuckDBSettings(path=args.warehouse))
    normalizer = Normalizer(settings.normalize)
    warehouse = DuckDBSink(settings, args.warehouse)
    warehouse.open()
    warehouse.close()
    raw_limit = settings.normalize.dlq_raw_max_bytes
    clock: dict[str, float] = {}

    def normalize(value: bytes, key: Any, timestamp: int, headers: Any) -> list[tuple[str, dict[str, Any]]]:
        if "first" not in clock:
            clock["first"] = time.time()
        ctx = message_context()
        events, rejections = normalizer.normalize(
            value, topic=ctx.topic, partition=ctx.partition, offset=ctx.offset, timestamp_ms=timestamp
        )
        out = [("e", orjson.loads(dumps_event(ev))) for ev in events]
        for r in rejections:
            record = dead_letter(r, stage="normalize", topic=ctx.topic, partition=ctx.partition, offset=ctx.offset, raw_limit=raw_limit)
            out.append(("r", orjson.loads(dumps_dead_letter(record))))
        return out

    class PeerDuckDBSink(BatchingSink):
        def write(self, batch: SinkBatch) -> None:
            events: list[dict[str, Any]] = []
            rejected: list[dict[str, Any]] = []
            for item in batch:
                kind, doc = item.value
                (events if kind == "e" else rejected).append(doc)
            if events:
                warehouse.write(events)
            if rejected:
                warehouse.write_rejected(rejected)
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
        consumer_extra_config={"session.timeout.ms": int(args.session_timeout * 1000), "heartbeat.interval.ms": 1000},
    )
    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf = sdf.apply(normalize, expand=True, metadata=True)
    sdf.sink(PeerDuckDBSink())
    started = time.time()
    app.run(count=args.outputs, timeout=args.idle_timeout, collect=False)
    warehouse.close()

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


def run_peer(bootstrap: str, topic: str, group: str, warehouse: Path, outputs: int, events: int, partitions: int,
             batch_max_events: int, flush_interval: float, session_timeout: float = 10.0,
             timeout: float = 900.0) -> dict[str, Any]:
    """Run the peer as a subprocess (its RSS is its own) and return its measurements."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable, "-m", "bench.peer_quix", "--bootstrap", bootstrap, "--topic", topic, "--group", group,
        "--warehouse", str(warehouse), "--outputs", str(outputs), "--partitions", str(partitions),
        "--batch-max-events", str(batch_max_events), "--flush-interval", str(flush_interval),
        "--session-timeout", str(session_timeout), "--state-dir", str(warehouse.parent / f"{group}-state"),
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"peer failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-3000:]}")
    result = orjson.loads(lines[-1])
    result["events"] = events
    result["eps"] = round(events / max(result["seconds"], 1e-6), 1)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
