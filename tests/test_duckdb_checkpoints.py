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

from ops.harness.synthetic import Generator
from ops.inprocess import normalize_values
from sinks.duckdb import DuckDBSettings, DuckDBSink
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
