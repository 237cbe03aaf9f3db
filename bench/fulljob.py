"""The full-job ceiling: the same job, hand-written, no framework (``python -m bench.fulljob``).

raw topic -> aiokafka ``getmany`` -> msgspec decode of both wire dialects
into one Struct -> column lists -> an Arrow table -> one DuckDB ``INSERT ...
SELECT`` per batch (in a thread, overlapping the next batch's decode; DuckDB
releases the GIL) -> offsets committed after each insert.  One process, one
event loop; what a practical Python pipeline can do on this machine.

It does less than ours, on purpose and in plain sight: a minimal validation
(JSON object, an event name, an identity), no typed tables, no flag
decisions, no redaction, no sanitising, no MERGE/deduplication (plain
appends), no intermediate topic.  So ``ratio_fulljob`` = ours / this is the
share of the practical limit our runtime reaches, not a like-for-like peer.

Clock: start = the first fetched batch; end = the start of the last insert
(the ``loaded_at`` it writes), the same end ours and the peer use.  Prints one
JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from hashlib import blake2b
from pathlib import Path
from typing import Any

import msgspec
import orjson

from bench.proc import ROOT, contender_env, vm_hwm_mb

#: Arrow's streaming-insert advice for DuckDB: batches of at least 122,880 rows.
BATCH_ROWS = 122_880
#: ...but never hold a partial batch longer than this (the latency target is 1 s).
BATCH_SECONDS = 1.0
EMPTY = msgspec.Raw(b"{}")


class RawEvent(msgspec.Struct):
    """PostHog-style and Segment-style fields in one Struct; unknown keys are skipped."""

    event: str | None = None
    type: str | None = None
    distinct_id: str | None = None
    userId: str | None = None  # noqa: N815 - wire names
    anonymousId: str | None = None  # noqa: N815
    uuid: str | None = None
    messageId: str | None = None  # noqa: N815
    timestamp: str | None = None
    originalTimestamp: str | None = None  # noqa: N815
    sentAt: str | None = None  # noqa: N815
    properties: msgspec.Raw = EMPTY
    context: msgspec.Raw = EMPTY


COLUMNS = (
    "message_id",
    "type",
    "event",
    "distinct_id",
    "user_id",
    "anonymous_id",
    "ts",
    "sent_at",
    "properties",
    "context",
    "source_partition",
    "source_offset",
)

DDL = """
CREATE TABLE IF NOT EXISTS events (
    message_id VARCHAR, type VARCHAR, event VARCHAR, distinct_id VARCHAR,
    user_id VARCHAR, anonymous_id VARCHAR, timestamp TIMESTAMPTZ, sent_at TIMESTAMPTZ,
    loaded_at TIMESTAMPTZ, properties JSON, context JSON,
    source_topic VARCHAR, source_partition INTEGER, source_offset BIGINT);
CREATE TABLE IF NOT EXISTS rejected_events (
    reason VARCHAR, source_topic VARCHAR, source_partition INTEGER, source_offset BIGINT,
    loaded_at TIMESTAMPTZ, raw BLOB);
"""

INSERT = """
INSERT INTO events SELECT message_id, type, event, distinct_id, user_id, anonymous_id,
    TRY_CAST(ts AS TIMESTAMPTZ), TRY_CAST(sent_at AS TIMESTAMPTZ), $loaded_at,
    properties::JSON, context::JSON, $topic, source_partition, source_offset FROM batch
"""


class Columns:
    """One batch as column lists; rejected records kept apart."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        self.rejected: list[tuple[str, int, int, bytes]] = []
        self.rows = 0
        #: The next offset to commit per partition once this batch is written.
        self.offsets: dict[Any, int] = {}

    def add(self, decode: Any, value: bytes, partition: int, offset: int) -> None:
        try:
            ev = decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.rejected.append(("invalid_json_or_shape", partition, offset, value))
            return
        distinct = ev.distinct_id or ev.userId or ev.anonymousId
        kind = ev.type or "track"
        name = ev.event or ("$" + kind if kind != "track" else None)
        # No id sent: a content hash, as ours does (its exact rule is mappers/identifiers.py).
        message_id = ev.uuid or ev.messageId or blake2b(value, digest_size=16).hexdigest()
        if not (distinct and name):
            self.rejected.append(("missing_required_field", partition, offset, value))
            return
        c = self.cols
        c["message_id"].append(message_id)
        c["type"].append(kind)
        c["event"].append(name)
        c["distinct_id"].append(distinct)
        c["user_id"].append(ev.userId or ev.distinct_id)
        c["anonymous_id"].append(ev.anonymousId)
        c["ts"].append(ev.timestamp or ev.originalTimestamp)
        c["sent_at"].append(ev.sentAt)
        # Raw slices of the original bytes: no re-encoding.
        c["properties"].append(bytes(ev.properties).decode())
        c["context"].append(bytes(ev.context).decode())
        c["source_partition"].append(partition)
        c["source_offset"].append(offset)
        self.rows += 1


def write(con: Any, topic: str, batch: Columns) -> tuple[datetime, float]:
    """Insert one batch in one transaction; returns its ``loaded_at`` and the seconds it took."""
    import pyarrow as pa

    t0 = time.perf_counter()
    loaded_at = datetime.now(UTC)
    con.execute("BEGIN")
    if batch.rows:
        arrow = pa.table({name: batch.cols[name] for name in COLUMNS})
        con.register("batch", arrow)
        con.execute(INSERT, {"loaded_at": loaded_at, "topic": topic})
        con.unregister("batch")
    if batch.rejected:
        rejected = pa.table(
            {
                "reason": [r[0] for r in batch.rejected],
                "p": [r[1] for r in batch.rejected],
                "o": [r[2] for r in batch.rejected],
                "raw": pa.array([r[3] for r in batch.rejected], pa.binary()),
            }
        )
        con.register("rej", rejected)
        con.execute(
            "INSERT INTO rejected_events SELECT reason, $topic, p, o, $loaded_at, raw FROM rej",
            {"loaded_at": loaded_at, "topic": topic},
        )
        con.unregister("rej")
    con.execute("COMMIT")
    return loaded_at, time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb
    from aiokafka import AIOKafkaConsumer

    con = duckdb.connect(str(args.warehouse))
    con.execute(DDL)
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(args.session_timeout * 1000),
        heartbeat_interval_ms=1000,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    decode = msgspec.json.Decoder(RawEvent).decode
    seen = writes = 0
    started: float | None = None
    last_loaded: datetime | None = None
    last_write_end: float | None = None
    pending: tuple[asyncio.Future[tuple[datetime, float]], dict[Any, int]] | None = None
    spent = {"write": 0.0}

    async def finish(
        job: tuple[asyncio.Future[tuple[datetime, float]], dict[Any, int]],
    ) -> tuple[datetime, float]:
        loaded_at, took = await job[0]
        spent["write"] += took
        ended = time.time()
        await consumer.commit(job[1])
        return loaded_at, ended

    batch, batch_started = Columns(), time.monotonic()
    deadline = time.monotonic() + args.timeout
    try:
        while seen < args.messages:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fulljob read {seen}/{args.messages} in {args.timeout:.0f}s")
            fetched = await consumer.getmany(timeout_ms=200, max_records=10_000)
            if fetched and started is None:
                started, batch_started = time.time(), time.monotonic()
            for tp, records in fetched.items():
                add, partition = batch.add, tp.partition
                for r in records:
                    add(decode, r.value, partition, r.offset)
                seen += len(records)
                if records:
                    batch.offsets[tp] = records[-1].offset + 1
            full = batch.rows + len(batch.rejected) >= BATCH_ROWS
            if full or seen >= args.messages or time.monotonic() - batch_started > BATCH_SECONDS:
                if batch.rows or batch.rejected:
                    # One write in flight: DuckDB releases the GIL, so the next
                    # batch decodes while this one inserts.
                    if pending is not None:
                        last_loaded, last_write_end = await finish(pending)
                        writes += 1
                    pending = (
                        asyncio.ensure_future(asyncio.to_thread(write, con, args.topic, batch)),
                        batch.offsets,
                    )
                batch, batch_started = Columns(), time.monotonic()
        if pending is not None:
            last_loaded, last_write_end = await finish(pending)
            writes += 1
    finally:
        await consumer.stop()
    events, rejected = con.execute(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM rejected_events)"
    ).fetchone()
    con.close()
    first = started or time.time()
    end = last_loaded.timestamp() if last_loaded else time.time()
    return {
        "messages": seen,
        "seconds": round(end - first, 3),
        "seconds_incl_last_write": round((last_write_end or end) - first, 3),
        "writes": writes,
        # Time inside the DuckDB transactions (overlapping the next batch's decode).
        "write_seconds": round(spent["write"], 3),
        "batch_rows": BATCH_ROWS,
        "warehouse_events": events,
        "warehouse_rejected": rejected,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--warehouse", required=True, type=Path)
    parser.add_argument("--messages", required=True, type=int)
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    from etl.collector import tune_for_batches

    tune_for_batches()  # as our workers: the ceiling is not held back by the collector
    result = asyncio.run(run(args)) | {"rss_mb": vm_hwm_mb()}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


def run_fulljob(
    bootstrap: str,
    topic: str,
    group: str,
    warehouse: Path,
    messages: int,
    events: int,
    session_timeout: float = 10.0,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Run the hand-written pipeline as its own process and return its measurements."""
    import subprocess

    env = contender_env()
    cmd = [
        sys.executable, "-m", "bench.fulljob", "--bootstrap", bootstrap, "--topic", topic,
        "--group", group, "--warehouse", str(warehouse), "--messages", str(messages),
        "--session-timeout", str(session_timeout), "--timeout", str(timeout),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=timeout + 60)
    lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = proc.stderr.decode(errors="replace")[-3000:]
        raise RuntimeError(f"fulljob failed (exit {proc.returncode}): {err}")
    result = orjson.loads(lines[-1])
    result["events"] = events
    result["eps"] = round(events / max(result["seconds"], 1e-6), 1)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
