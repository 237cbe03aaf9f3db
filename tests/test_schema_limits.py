"""Hostile values through the real mapper into a real DuckDB file: nothing lost, nothing silent.

Each test here failed on the code before issue 12.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson

from mappers.normalize import Normalizer, dumps_event
from sinks.duckdb import DuckDBSettings, DuckDBSink
from sinks.schema import MAX_NEW_COLUMN_NAME, SchemaTracker
from sinks.settings import Settings


def normalize(*values: object) -> list[dict]:
    n = Normalizer()
    out: list[dict] = []
    for i, value in enumerate(values):
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        events, rejections = n.normalize(
            raw, topic="events.raw", partition=0, offset=i, timestamp_ms=1_795_000_000_000
        )
        assert not rejections, [(r.reason, r.error) for r in rejections]
        out.extend(orjson.loads(dumps_event(ev)) for ev in events)  # as on the topic
    return out


def sink_for(tmp_path: Path) -> DuckDBSink:
    return DuckDBSink(
        Settings(duckdb=DuckDBSettings(path=tmp_path / "wh.duckdb"), sinks=["duckdb"])
    )


def query(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def tool(i: int, **props: object) -> dict:
    return {
        "event": "tool_used",
        "distinct_id": "u1",
        "uuid": f"00000000-0000-4000-8000-{i:012d}",
        "properties": {"tool_id": "t", **props},
    }


def test_big_integers_land_once_with_no_sink_error(tmp_path: Path) -> None:
    events = normalize(
        b'{"event":"tool_used","distinct_id":"u1","uuid":"big-1","properties":{"n":%d}}' % 2**63,
        b'{"event":"x","distinct_id":"u1","uuid":"big-2","properties":{"n":%d}}' % (10**30),
    )
    sink = sink_for(tmp_path)
    sink.open()
    result = sink.write(events)
    sink.close()
    assert result.written == 2 and not result.rejected
    path = tmp_path / "wh.duckdb"
    rows = query(path, "SELECT message_id, properties->>'n' FROM events ORDER BY 1")
    assert rows == [("big-1", str(2**63)), ("big-2", str(10**30))]
    assert query(path, "SELECT n FROM tool_used") == [(str(2**63),)]


def test_posthog_dollar_properties_are_not_user_columns(tmp_path: Path) -> None:
    events = normalize(
        tool(1, **{"$lib": "posthog-node", "$lib_version": "5.7", "$groups": {"workspace": "w"}})
    )
    sink = sink_for(tmp_path)
    sink.open()
    sink.write(events)
    sink.close()
    cols = {r[0] for r in query(tmp_path / "wh.duckdb", "DESCRIBE tool_used")}
    assert not cols & {"lib", "lib_version", "groups", "groups_"}
    sql = """SELECT json_extract_string(properties, '$."$lib"') FROM events"""
    (props,) = query(tmp_path / "wh.duckdb", sql)[0]
    assert props == "posthog-node"  # still in properties


def test_keys_that_meet_across_events_leave_a_discard_row(tmp_path: Path) -> None:
    events = normalize(
        tool(1, **{"Flow Owner": "a"}), tool(2, flowOwner="b"), tool(3, **{"FLOW-OWNER": "c"})
    )
    sink = sink_for(tmp_path)
    sink.open()
    sink.write(events[:1])
    sink.write(events[1:])  # a later batch, too
    sink.close()
    path = tmp_path / "wh.duckdb"
    assert query(path, "SELECT flow_owner FROM tool_used WHERE flow_owner IS NOT NULL") == [("a",)]
    rows = query(
        path,
        "SELECT property_key, reason FROM schema_discards "
        "WHERE column_name = 'flow_owner' ORDER BY 1",
    )
    assert rows == [("FLOW-OWNER", "identifier_collision"), ("flowOwner", "identifier_collision")]


def test_nul_key_collision_leaves_a_discard_row_and_keeps_the_loser(tmp_path: Path) -> None:
    events = normalize(
        {
            "event": "x",
            "distinct_id": "u1",
            "uuid": "nul-1",
            "properties": {"ab": "first", "a\u0000b": "second"},
        }
    )
    sink = sink_for(tmp_path)
    sink.open()
    sink.write(events)
    sink.close()
    path = tmp_path / "wh.duckdb"
    assert query(
        path, "SELECT properties->>'ab', context->'etl'->'key_collisions'->0->>'value' FROM events"
    ) == [("first", "second")]
    assert query(path, "SELECT message_id, table_name, reason FROM schema_discards") == [
        ("nul-1", "events", "nul_key_collision")
    ]


def test_column_budget_and_name_length(tmp_path: Path) -> None:
    tracker = SchemaTracker(max_columns=30)
    props = {f"k{i:03d}": i for i in range(100)}
    props["x" * 300] = "long"
    plan = tracker.plan(normalize(tool(1, **props)))
    added = plan.new_columns["tool_used"]
    assert len(tracker.existing["tool_used"]) == 30
    assert all(len(c.name) <= MAX_NEW_COLUMN_NAME for c in added)
    over = [d for d in plan.discards if d.reason == "column_budget"]
    assert len(over) == 101 - len(added)
    # The real sink: 500 new keys never become 500 columns.
    events = normalize(tool(2, **{f"p{i}": i for i in range(500)}))
    sink = sink_for(tmp_path)
    sink.open()
    sink.write(events)
    sink.close()
    path = tmp_path / "wh.duckdb"
    (ncols,) = query(
        path, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'tool_used'"
    )[0]
    assert ncols <= 200
    (kept,) = query(path, "SELECT properties->>'p499' FROM events")[0]
    assert kept == "499"
    (budget,) = query(path, "SELECT count(*) FROM schema_discards WHERE reason = 'column_budget'")[
        0
    ]
    assert budget == 500 - (ncols - len(SchemaTracker().tables["tool_used"].columns))


def test_an_older_events_table_gains_the_new_time_column_on_open(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE events (message_id VARCHAR, type VARCHAR, event VARCHAR)")
    con.close()
    sink = sink_for(tmp_path)
    sink.open()
    sink.write(
        normalize(
            {
                "type": "track",
                "event": "x",
                "userId": "u",
                "messageId": "m1",
                "timestamp": "2026-11-16T08:00:00Z",
                "originalTimestamp": "2026-11-18T11:00:00Z",
            }
        )
    )
    sink.close()
    rows = query(path, "SELECT message_id, stated_timestamp, timestamp FROM events")
    assert rows[0][0] == "m1"
    assert rows[0][1] is not None and rows[0][1] == rows[0][2]
