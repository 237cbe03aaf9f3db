"""etl dlq: list/show grouped by reason, requeue after a mapper fix, purge watermark."""

from __future__ import annotations

import json
import time
import uuid

import orjson

from etl import kafka_tools
from ops import dlq as ops
from tests.conftest import warehouse_rows


def sized_event(tag: str, i: int, size: int) -> tuple[str, bytes]:
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dlq-{tag}-{i}"))
    doc = {
        "event": f"dlq_{tag}",
        "distinct_id": f"u{i}",
        "uuid": uid,
        "properties": {"pad": "x" * size},
    }
    return uid, orjson.dumps(doc)


def cli_json(p, *args):
    proc = p.cli(*args)
    assert proc.returncode == 0, (
        f"{args}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]


def test_requeue_after_mapper_fix_lands_fixed_events_and_returns_still_bad_ones(make_pipeline):
    # The "bug": events over 2 KiB are rejected.  The "fix" raises the limit to 8 KiB.
    p = make_pipeline(partitions=2, extra_env={"ETL_NORMALIZE__MAX_EVENT_BYTES": "2048"})
    s = p.settings
    good = [sized_event("good", i, 10) for i in range(20)]
    medium = [sized_event("medium", i, 3000) for i in range(4)]
    huge = [sized_event("huge", i, 10_000) for i in range(2)]
    broken = [b"{broken json %d" % i for i in range(3)]
    p.produce([v for _, v in good + medium + huge] + broken)
    p.start()
    p.wait_drained(90)
    landed = {r[0] for r in warehouse_rows(s.duckdb.path, "SELECT message_id FROM events")}
    assert landed == {u for u, _ in good}

    (listed,) = cli_json(p, "dlq", "list", "--json")
    assert listed["total"] == 9
    assert listed["by_reason"] == {"payload_too_large": 6, "invalid_json": 3}
    assert listed["by_stage_reason"] == [
        {"stage": "normalize", "reason": "payload_too_large", "count": 6},
        {"stage": "normalize", "reason": "invalid_json", "count": 3},
    ]
    from_warehouse = ops.summarize_warehouse(s.duckdb.path)  # `etl dlq list --from-warehouse`
    assert from_warehouse["by_reason"] == {"payload_too_large": 6, "invalid_json": 3}

    shown = cli_json(p, "dlq", "show", "--reason", "payload_too_large", "--json")
    # Too large to parse: no message_id, but the original bytes are kept exactly.
    assert sorted(ops.decode_raw(d) for d in shown) == sorted(v for _, v in medium + huge)

    # Deploy the fix (the higher limit), and requeue: the stages run in the requeue process.
    p.env["ETL_NORMALIZE__MAX_EVENT_BYTES"] = "8192"
    requeue_started = time.time()
    (requeued,) = cli_json(p, "dlq", "requeue", "--reason", "payload_too_large", "--yes", "--json")
    assert requeued == {
        "requeued": 6,
        "normalized": 4,
        "rejected_again": 2,
        "rejected_again_by_reason": {"payload_too_large": 2},
        "by_sink": {"duckdb": 4},
        "skipped_cut_payload": [],
        "skipped_sink_not_targeted": {},
    }
    landed = {r[0] for r in warehouse_rows(s.duckdb.path, "SELECT message_id FROM events")}
    assert landed == {u for u, _ in good + medium}
    # The still-too-large ones are dead letters again, under their original source
    # coordinates: the same rejection ids, so one row each, with the newest rejection.
    p.note_ends(s.kafka.dlq_topic)
    p.wait_drained(60)
    again = ops.read_dead_letters(
        s, ops.Filters.parse(reason="payload_too_large", since=str(int(requeue_started * 1000)))
    )
    assert sorted(ops.decode_raw(d.record) for d in again) == sorted(v for _, v in huge)
    assert ops.summarize(ops.read_dead_letters(s))["by_reason"] == {
        "payload_too_large": 6,
        "invalid_json": 3,
    }
    assert warehouse_rows(
        s.duckdb.path,
        "SELECT reason, count(*) FROM rejected_events GROUP BY reason ORDER BY reason",
    ) == [("invalid_json", 3), ("payload_too_large", 6)]

    # Purge: the watermark moves to the true end; list/show/requeue see nothing;
    # the warehouse keeps history.
    (purged,) = cli_json(p, "dlq", "purge", "--yes", "--json")
    dlq_ends = p.note_ends(s.kafka.dlq_topic)
    assert purged["group"] == f"{s.kafka.group_prefix}-dlq-purged"
    assert kafka_tools.committed_offsets(s, purged["group"]) == dlq_ends
    assert ops.read_dead_letters(s) == []
    assert warehouse_rows(s.duckdb.path, "SELECT count(*) FROM rejected_events") == [(9,)]
