"""The DuckDB sink's duplicate check: one row per ``message_id`` whoever else touched the file.

The sink looks up a batch's ids in ``_etl_message_ids`` (one hash per
``events`` row) instead of scanning ``events``.  These tests change the
warehouse the ways a user can, with real DuckDB files: an older version's
file without the table, rows inserted or deleted by hand between the sink's
holds, ``etl forget``, a hash that is there without its row.  After each, a
redelivered batch must still replace its rows, never duplicate them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from ops.harness.synthetic import Generator
from ops.inprocess import normalize_values
from sinks.duckdb import DuckDBSettings, DuckDBSink
from sinks.duckdb_message_ids import TABLE
from sinks.settings import Settings
from tests.conftest import warehouse_rows

#: events rows, distinct ids among them, and recorded hashes: equal when all is well.
COUNTS = (
    "SELECT (SELECT count(*) FROM events), (SELECT count(DISTINCT message_id) FROM events), "
    f"(SELECT count(*) FROM {TABLE})"
)


def _events(n: int, seed: int = 3) -> list[dict[str, Any]]:
    values = [m.value for m in Generator(seed=seed, malformed_rate=0, batch_rate=0).messages(n)]
    return normalize_values(values, Settings())


def _sink(path: Path) -> DuckDBSink:
    sink = DuckDBSink(Settings(duckdb=DuckDBSettings(path=path, max_hold_seconds=3600)))
    sink.open()
    return sink


def _write_once(path: Path, events: list[dict[str, Any]]) -> None:
    """One sink hold: open the file, write one batch, let the file go."""
    sink = _sink(path)
    sink.write(events)
    sink.close()


def _by_hand(path: Path, sql: str) -> None:
    """What an analyst or another tool does to the file while no sink holds it."""
    con = duckdb.connect(str(path))
    try:
        con.execute(sql)
    finally:
        con.close()


def test_a_redelivered_batch_replaces_its_rows_and_records_each_id_once(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    events = _events(300)
    sink = _sink(path)
    sink.write(events)
    sink.write(events[100:] + _events(50, seed=4))
    sink.close()
    # 300 + 50 new; the 200 redelivered were replaced, and no hash was added for them.
    assert warehouse_rows(path, COUNTS) == [(350, 350, 350)]
    typed = warehouse_rows(path, "SELECT count(*), count(DISTINCT message_id) FROM flow_executed")
    assert typed[0][0] == typed[0][1] > 0


def test_a_warehouse_from_before_the_index_gets_it_on_open(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    events = _events(200)
    _write_once(path, events)
    _by_hand(path, f"DROP TABLE {TABLE}")
    _write_once(path, events)  # all 200 again
    assert warehouse_rows(path, COUNTS) == [(200, 200, 200)]


def test_rows_inserted_by_hand_between_holds_are_still_replaced(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    events = _events(200)
    _write_once(path, events[:100])
    # Another tool copies 50 rows in under new ids (without their hashes).
    _by_hand(
        path,
        "INSERT INTO events SELECT * REPLACE (message_id || '-copy' AS message_id) "
        "FROM events LIMIT 50",
    )
    sql = "SELECT message_id FROM events WHERE message_id LIKE '%-copy'"
    copied = [r[0] for r in warehouse_rows(path, sql)]
    assert len(copied) == 50
    by_id = {e["message_id"]: e for e in events}
    redelivered = [{**by_id[mid.removesuffix("-copy")], "message_id": mid} for mid in copied]
    _write_once(path, redelivered + events[100:])
    assert warehouse_rows(path, COUNTS) == [(250, 250, 250)]


def test_rows_deleted_by_hand_land_again_once(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    events = _events(200)
    _write_once(path, events)
    gone = events[0]["message_id"]
    _by_hand(path, f"DELETE FROM events WHERE message_id = '{gone}'")
    _write_once(path, events[:10])
    assert warehouse_rows(path, COUNTS) == [(200, 200, 200)]


def test_a_hash_without_its_row_does_not_keep_the_row_out(tmp_path: Path) -> None:
    """A collision, or an id left behind: the sink searches events, finds nothing, inserts."""
    path = tmp_path / "wh.duckdb"
    events = _events(100)
    sink = _sink(path)
    sink.write(events[:50])
    con = sink._connect()
    con.execute(
        f"INSERT INTO {TABLE} SELECT md5_number_lower(unnest(?::VARCHAR[]))",
        [[e["message_id"] for e in events[50:60]]],
    )
    con.execute(f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} LIMIT 10)")
    sink.write(events[50:])
    sink.write(events[50:])  # and a redelivery of them
    sink.close()
    assert warehouse_rows(path, COUNTS) == [(100, 100, 100)]


def test_forget_keeps_one_hash_per_row(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    events = _events(200)
    sink = _sink(path)
    sink.write(events)
    person = events[0]["distinct_id"]
    theirs = sum(1 for e in events if person in (e["distinct_id"], e["user_id"], e["anonymous_id"]))
    counts = sink.delete_people({person})
    assert counts["events"] == theirs > 0
    _write_once(path, events)  # a replay after the erasure, with the forgotten person's rows too
    assert warehouse_rows(path, COUNTS) == [(200, 200, 200)]
