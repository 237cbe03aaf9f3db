"""Storing dead letters in a DuckDB warehouse that already holds many.

Each ``write_rejected`` replaces the rows whose ``rejection_id`` it carries.
Finding them used to be a join over the whole ``rejection_id`` column (random
hashes: DuckDB's zone maps prune nothing), so every dead-letter batch cost
more as ``rejected_events`` grew: 11 ms of CPU per 50 letters on a fresh
file, 109 ms at 1M rows and 460 ms at 5M.  A ``rejection_id`` is a hash of the source
coordinates, so an earlier row with the same id has the same
``source_offset``: the search reads only the row groups whose offsets overlap
the batch's, unless a letter's id is not that hash (a foreign record).
These tests watch the real write's DELETE in DuckDB's profiler and check
that replacing still replaces.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from mappers.deadletter import rejection_id
from sinks.duckdb import DuckDBSink
from tests.conftest import (
    DeleteProfiles,
    stored_dead_letter,
    warehouse_filled_by,
    warehouse_rows,
)

#: Rows already in rejected_events: eight of DuckDB's 122,880-row groups and more.
HISTORY = 1_000_000


def _warehouse_with_history(tmp_path: Path) -> tuple[DuckDBSink, Path]:
    """A sink on a file whose rejected_events holds HISTORY letters at offsets 0.."""
    # The ids the normalize stage would give letters at these offsets (sha256, cut to 32).
    return warehouse_filled_by(
        tmp_path,
        "INSERT INTO rejected_events (rejection_id, reason, stage, raw_payload, raw_encoding, "
        "source_topic, source_partition, source_offset) "
        "SELECT substr(sha256('normalize|raw|0|' || i || '||'), 1, 32), 'invalid_json', "
        f"'normalize', '{{', 'utf-8', 'raw', 0, i FROM range({HISTORY}) t(i)",
    )


def test_the_id_rule_the_history_uses_is_the_stages() -> None:
    # The SQL above builds the same ids as mappers.deadletter for the same coordinates.
    con = duckdb.connect()
    row = con.execute("SELECT substr(sha256('normalize|raw|0|' || 42 || '||'), 1, 32)").fetchone()
    assert row is not None
    assert row[0] == rejection_id("normalize", "raw", 0, 42, None, None)


@pytest.mark.parametrize(
    ("first_offset", "row_groups"),
    [
        (HISTORY, 0),  # new letters: past every stored offset, nothing to read
        (HISTORY // 2, 1),  # a replay of old offsets: the one row group that holds them
    ],
    ids=["new", "replayed"],
)
def test_dead_letters_read_only_the_row_groups_of_their_offsets(
    tmp_path: Path, first_offset: int, row_groups: int
) -> None:
    sink, path = _warehouse_with_history(tmp_path)
    sink.open()
    profiles = DeleteProfiles(sink._con, tmp_path / "profile.json")  # type: ignore[arg-type]
    sink._con = profiles  # type: ignore[assignment]
    sink.write_rejected(
        [stored_dead_letter(first_offset + i, "schema_violation") for i in range(50)]
    )
    sink.close()

    scans = [
        s for s in profiles.scans if s["extra_info"].get("Table", "").endswith(".rejected_events")
    ]
    assert sum(s["row_groups_scanned"] for s in scans) == row_groups, scans
    replaced = 50 if first_offset < HISTORY else 0
    assert warehouse_rows(path, "SELECT count(*) FROM rejected_events") == [
        (HISTORY + 50 - replaced,)
    ]
    assert warehouse_rows(
        path,
        "SELECT count(*) FROM rejected_events WHERE reason = 'schema_violation' "
        f"AND source_offset BETWEEN {first_offset} AND {first_offset + 49}",
    ) == [(50,)]


def test_a_redelivered_dead_letter_still_replaces_its_row(tmp_path: Path) -> None:
    sink, path = _warehouse_with_history(tmp_path)
    # Old offsets far apart (the first and a middle row group) and a new one, in one batch.
    old = [
        stored_dead_letter(7, "schema_violation"),
        stored_dead_letter(HISTORY // 2, "schema_violation"),
    ]
    sink.write_rejected([*old, stored_dead_letter(HISTORY)])
    sink.close()
    assert warehouse_rows(
        path,
        "SELECT source_offset, reason, count(*) FROM rejected_events "
        f"WHERE source_offset IN (7, {HISTORY // 2}, {HISTORY}) GROUP BY ALL ORDER BY 1",
    ) == [
        (7, "schema_violation", 1),
        (HISTORY // 2, "schema_violation", 1),
        (HISTORY, "invalid_json", 1),
    ]
    assert warehouse_rows(path, "SELECT count(*) FROM rejected_events") == [(HISTORY + 1,)]


def test_letters_without_an_offset_are_matched_on_their_id_alone(tmp_path: Path) -> None:
    sink, path = _warehouse_with_history(tmp_path)
    hand_made = {**stored_dead_letter(3, "schema_violation"), "source_offset": None}
    sink.write_rejected([hand_made, stored_dead_letter(HISTORY)])
    sink.close()
    assert warehouse_rows(
        path,
        "SELECT source_offset, reason FROM rejected_events "
        f"WHERE rejection_id = '{hand_made['rejection_id']}'",
    ) == [(None, "schema_violation")]
    assert warehouse_rows(path, "SELECT count(*) FROM rejected_events") == [(HISTORY + 1,)]


def test_a_letter_whose_id_is_not_its_coordinates_hash_is_searched_for_everywhere(
    tmp_path: Path,
) -> None:
    # A foreign record on the dead-letter topic: an id of its own choosing, and an
    # offset far from the stored row that has that id.
    sink, path = _warehouse_with_history(tmp_path)
    foreign = {
        **stored_dead_letter(HISTORY + 5, "schema_violation"),
        "rejection_id": stored_dead_letter(3)["rejection_id"],
    }
    sink.write_rejected([foreign])
    sink.close()
    assert warehouse_rows(
        path,
        f"SELECT source_offset, reason FROM rejected_events "
        f"WHERE rejection_id = '{foreign['rejection_id']}'",
    ) == [(HISTORY + 5, "schema_violation")]
    assert warehouse_rows(path, "SELECT count(*) FROM rejected_events") == [(HISTORY,)]
