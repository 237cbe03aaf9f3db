"""etl replay: exact time windows, idempotence, live groups untouched, dry-run counts, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from etl import kafka_tools
from tests.conftest import warehouse_rows

HOUR_MS = 3600 * 1000
COLUMNS = (
    "message_id, type, event, distinct_id, timestamp, properties, source_topic, source_partition, "
    "source_offset"
)


def event(i: int, when: datetime, tag: str) -> bytes:
    return orjson.dumps(
        {
            "event": f"replay_{tag}",
            "distinct_id": f"user-{i % 7}",
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}-{i}")),
            "properties": {"n": i, "tag": tag},
            "timestamp": when.isoformat(),
        }
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-4000:]}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snapshot(path: Path) -> list[tuple]:
    return warehouse_rows(path, f"SELECT {COLUMNS} FROM events ORDER BY message_id")


def test_replay_time_window_is_exact_idempotent_and_leaves_live_groups_alone(
    make_pipeline, tmp_path
):
    p = make_pipeline(partitions=2)
    s = p.settings
    now_ms = int(time.time() * 1000)
    # Three hours of history, one group per hour; all sent in one producer batch per
    # partition, so the broker's batch-granular offsets_for_times must be refined.
    groups = {"old": now_ms - 3 * HOUR_MS, "window": now_ms - 2 * HOUR_MS, "new": now_ms - HOUR_MS}
    producer = kafka_tools.producer(s, linger_ms=200)
    expected: dict[str, set[str]] = {tag: set() for tag in groups}
    per_partition_window = {0: 0, 1: 0}
    for tag, ts in groups.items():
        for i in range(20):
            value = event(i, datetime.fromtimestamp(ts / 1000, UTC), tag)
            expected[tag].add(orjson.loads(value)["uuid"])
            producer.send(s.kafka.raw_topic, value=value, partition=i % 2, timestamp_ms=ts + i)
            per_partition_window[i % 2] += tag == "window"
        if tag == "window":  # two dead letters inside the window
            for j in range(2):
                producer.send(
                    s.kafka.raw_topic, value=b"{not json", partition=j, timestamp_ms=ts + 100 + j
                )
                per_partition_window[j] += 1
    producer.flush()
    producer.close()
    p.note_ends()
    p.start()
    p.wait_drained(90)
    assert {
        r[0] for r in warehouse_rows(s.duckdb.path, "SELECT message_id FROM events")
    } == set().union(*expected.values())

    live_groups = [s.normalize_group, s.sink_group("duckdb")]
    offsets_before = {g: kafka_tools.committed_offsets(s, g) for g in live_groups}
    normalized_before = p.note_ends(s.kafka.normalized_topic)

    window = [
        "--source",
        "raw",
        "--sinks",
        "duckdb",
        "--from",
        datetime.fromtimestamp((now_ms - 2.5 * HOUR_MS) / 1000, UTC).isoformat(),
        "--to",
        datetime.fromtimestamp((now_ms - 1.5 * HOUR_MS) / 1000, UTC).isoformat(),
    ]

    dry = last_json(p.cli("replay", *window, "--dry-run", "--json"))
    assert dry["records"] == 22 and dry["events"] == 20 and dry["rejected"] == 2
    assert {k: v["records"] for k, v in dry["partitions"].items()} == {
        "0": per_partition_window[0],
        "1": per_partition_window[1],
    }
    assert dry["by_sink"] == {"duckdb": 20}
    assert dry["by_event"] == {"replay_window": 20}

    # Replay into a fresh warehouse: it must hold exactly the window.
    fresh = tmp_path / "replayed.duckdb"
    env = {"ETL_DUCKDB__PATH": str(fresh)}
    first = last_json(p.cli("replay", *window, "--json", env=env))
    assert first["records"] == 22 and first["events"] == 20 and first["resumed"] is False
    assert first["dead_lettered"] == 2
    replayed = snapshot(fresh)
    assert {r[0] for r in replayed} == expected["window"]
    live = [r for r in snapshot(s.duckdb.path) if r[0] in expected["window"]]
    assert replayed == live  # the same rows the live pipeline wrote, coordinates included

    # The same replay again: a fresh run over the same window changes nothing.
    second = last_json(p.cli("replay", *window, "--json", env=env))
    assert second["records"] == 22 and second["resumed"] is False
    assert snapshot(fresh) == replayed
    assert warehouse_rows(fresh, "SELECT count(*) FROM rejected_events") == [
        (0,)
    ]  # dead letters go to the DLQ topic only

    # Explicit ranges on the normalized topic, straight to the sink.
    ranges_wh = tmp_path / "ranges.duckdb"
    ends = {tp.partition: e for tp, e in normalized_before.items()}
    by_range = last_json(
        p.cli(
            "replay",
            "--source",
            "normalized",
            "--range",
            f"0:0-{ends[0]}",
            "--range",
            "1:0-",
            "--sinks",
            "duckdb",
            "--json",
            "--no-progress",
            env={"ETL_DUCKDB__PATH": str(ranges_wh)},
        )
    )
    assert by_range["events"] == 60
    assert snapshot(ranges_wh) == snapshot(s.duckdb.path)

    # Live groups never moved on the replayed topics (the live warehouse sink does consume
    # the replay's dead letters from the DLQ topic), and nothing went to the normalized topic.
    replayed_topics = {s.kafka.raw_topic, s.kafka.normalized_topic}

    def on_replayed_topics(offsets: dict) -> dict:
        return {
            g: {tp: o for tp, o in per.items() if tp.topic in replayed_topics}
            for g, per in offsets.items()
        }

    assert on_replayed_topics(
        {g: kafka_tools.committed_offsets(s, g) for g in live_groups}
    ) == on_replayed_topics(offsets_before)
    assert p.note_ends(s.kafka.normalized_topic) == normalized_before
    # The replayed dead letters carry the live ones' rejection ids: one row each in the warehouse.
    p.note_ends()
    p.wait_drained(30)
    rows = warehouse_rows(
        s.duckdb.path, "SELECT reason, count(*) FROM rejected_events GROUP BY reason"
    )
    assert rows == [("invalid_json", 2)]


def test_interrupted_replay_resumes_from_its_checkpoint(make_pipeline, tmp_path):
    p = make_pipeline(partitions=2)
    values = [event(i, datetime.now(UTC) - timedelta(minutes=5), "resume") for i in range(240)]
    p.produce(values)
    ids = {orjson.loads(v)["uuid"] for v in values}
    warehouse = tmp_path / "resume.duckdb"
    env = {**p.env, "ETL_DUCKDB__PATH": str(warehouse)}
    args = [
        sys.executable,
        "-m",
        "ops.cli",
        "replay",
        "--source",
        "raw",
        "--sinks",
        "duckdb",
        "--id",
        "resume-test",
        "--json",
        "--no-progress",
    ]
    state_file = Path(p.env["ETL_DATA_DIR"]) / "replay" / "resume-test.json"

    slow = subprocess.Popen(
        [*args, "--rate", "40"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        done_before_kill = 0
        while time.monotonic() < deadline:
            if state_file.exists():
                positions = orjson.loads(state_file.read_bytes())["positions"]
                done_before_kill = sum(positions.values())
                if done_before_kill >= 40:
                    break
            assert slow.poll() is None, slow.stderr.read().decode()[-3000:]
            time.sleep(0.1)
        assert done_before_kill >= 40
    finally:
        slow.send_signal(signal.SIGKILL)
        slow.wait(10)
    checkpoint = orjson.loads(state_file.read_bytes())
    assert checkpoint["done"] is False
    done = sum(checkpoint["positions"].values())
    assert 40 <= done < 240
    landed = {r[0] for r in warehouse_rows(warehouse, "SELECT message_id FROM events")}
    assert len(landed) >= done  # everything before the checkpoint is durable

    resumed = last_json(subprocess.run(args, env=env, capture_output=True, text=True, timeout=120))
    assert resumed["resumed"] is True
    assert resumed["records"] == 240 - done
    assert {r[0] for r in warehouse_rows(warehouse, "SELECT message_id FROM events")} == ids
    assert warehouse_rows(warehouse, "SELECT count(*) FROM events") == [(240,)]
    assert orjson.loads(state_file.read_bytes())["done"] is True
