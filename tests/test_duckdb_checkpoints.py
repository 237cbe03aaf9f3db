"""When the DuckDB sink checkpoints: when it lets the file go, not inside a batch's commit.

DuckDB checkpoints in the COMMIT that takes its write-ahead log past
``checkpoint_threshold`` (16 MB unless set).  Under load the sink holds the
file for up to ``max_hold_seconds`` and writes more WAL than that, so with
DuckDB's default one batch's commit in every few would carry a checkpoint:
hundreds of milliseconds to a second, and a quarter of the sink's time.  The
sink's threshold sits above what it writes in one hold; the checkpoint happens
when it closes the file (every ``max_hold_seconds``, or when a reader asks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ops.harness.synthetic import Generator
from ops.inprocess import normalize_values
from sinks.duckdb import MIN_UNMERGED_HOLD_ROWS, DuckDBSettings, DuckDBSink
from sinks.settings import Settings
from tests.conftest import warehouse_rows

BATCH = 5000


def _wal(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return wal.stat().st_size if wal.exists() else 0


def test_batches_commit_to_the_wal_and_closing_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    settings = Settings(duckdb=DuckDBSettings(path=path, max_hold_seconds=3600))
    values = [m.value for m in Generator(seed=5, malformed_rate=0, batch_rate=0).messages(BATCH)]
    events = normalize_values(values, settings)
    sink = DuckDBSink(settings)
    sink.open()
    sizes = []
    for n in range(8):
        sink.write([{**e, "message_id": f"{e['message_id']}-{n}"} for e in events])
        sizes.append(_wal(path))
    # Past DuckDB's default threshold, and no commit checkpointed (the WAL only grew).
    assert sizes[-1] > 16 * 1024 * 1024, sizes
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
    sink.close()
    assert _wal(path) == 0, "closing the file checkpoints it"
    assert warehouse_rows(path, "SELECT count(*), count(DISTINCT message_id) FROM events") == [
        (8 * len(events), 8 * len(events))
    ]


def test_the_threshold_is_a_setting(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    settings = Settings(duckdb=DuckDBSettings(path=path, checkpoint_threshold_mb=64))
    sink = DuckDBSink(settings)
    sink.open()
    try:
        con = sink._connect()
        assert con.execute("SELECT current_setting('checkpoint_threshold')").fetchall() == [
            ("61.0 MiB",)  # 64 MB
        ]
    finally:
        sink.close()


def _row_groups(path: Path, table: str) -> list[int]:
    rows = warehouse_rows(
        path,
        f"SELECT row_group_id, max(count) FROM pragma_storage_info('{table}') "
        "GROUP BY row_group_id ORDER BY row_group_id",
    )
    return [count for _, count in rows]


def _hold_after_hold(
    path: Path, merge: str, holds: int, rows: int, deferral: float = 600.0
) -> tuple[DuckDBSink, list[dict[str, Any]]]:
    """A sink that lets the file go after every batch (``max_hold_seconds=0``), after
    ``holds`` such holds of ``rows`` new events each; returns it and one hold's batch."""
    settings = Settings(
        duckdb=DuckDBSettings(
            path=path,
            max_hold_seconds=0,
            merge_row_groups=merge,
            max_merge_deferral_seconds=deferral,
        )
    )
    values = [m.value for m in Generator(seed=9, malformed_rate=0, batch_rate=0).messages(2100)]
    events = normalize_values(values, settings)[:2000]
    copies = -(-rows // len(events))
    batch = [{**e, "message_id": f"{e['message_id']}-{c}"} for c in range(copies) for e in events]
    batch = batch[:rows]
    sink = DuckDBSink(settings)
    sink.open()
    for n in range(holds):
        sink.write([{**e, "message_id": f"{e['message_id']}-{n}"} for e in batch])
    return sink, batch


def test_always_each_checkpoint_merges_the_small_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    rows = 2000
    sink, _ = _hold_after_hold(path, "always", holds=4, rows=rows)
    sink.close()
    # DuckDB's own policy: each hold's rows go to a row group of their own, which
    # the next checkpoints fold into larger ones (rewriting the rows already stored).
    assert len(_row_groups(path, "events")) < 4
    assert sum(_row_groups(path, "events")) == 4 * rows


def test_when_idle_a_large_hold_never_rewrites_stored_row_groups_and_idle_merges_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wh.duckdb"
    rows = MIN_UNMERGED_HOLD_ROWS
    sink, batch = _hold_after_hold(path, "when_idle", holds=3, rows=rows, deferral=0)
    # Each hold's checkpoint wrote only its own rows: one row group per hold.
    assert _row_groups(path, "events") == [rows] * 3
    sink.settings.duckdb.max_hold_seconds = 3600  # the next batch's file stays open ...
    sink.settings.duckdb.idle_release_seconds = 0
    sink.write([{**e, "message_id": f"{e['message_id']}-idle"} for e in batch[:10]])
    sink.on_idle()  # ... until the sink goes idle: that checkpoint merges
    assert len(_row_groups(path, "events")) < 4
    assert warehouse_rows(path, "SELECT count(*), count(DISTINCT message_id) FROM events") == [
        (3 * rows + 10, 3 * rows + 10)
    ]


def test_when_idle_small_holds_under_load_merge_now_and_then(tmp_path: Path) -> None:
    # A merging checkpoint rewrites every row group that is not full (closes of
    # 27,000-row holds that rewrote a larger row group took 0.72-2.69 s, the
    # others 0.23-0.86 s), so under load small holds merge only once per
    # max_merge_deferral_seconds ...
    path = tmp_path / "wh.duckdb"
    rows = 2000
    sink, batch = _hold_after_hold(path, "when_idle", holds=3, rows=rows)
    assert _row_groups(path, "events") == [rows] * 3
    # ... so that a slow stream that never idles does not keep a row group per hold.
    sink.settings.duckdb.max_merge_deferral_seconds = 0
    sink.write([{**e, "message_id": f"{e['message_id']}-later"} for e in batch])
    assert len(_row_groups(path, "events")) < 4
    assert sum(_row_groups(path, "events")) == 4 * rows
