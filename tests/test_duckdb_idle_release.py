"""When an idle DuckDB sink lets the file go.

Closing the file checkpoints it and (``merge_row_groups = when_idle``) merges
row groups, which can take seconds on a large file, and nothing is written
meanwhile.  A pause of one flush interval (0.2 s) is common under load, so the
sink keeps the file until no batch has come for ``idle_release_seconds``; a
reader that asks for the file gets it at the next idle moment, however short
the pause.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.harness.synthetic import Generator
from ops.inprocess import normalize_values
from sinks.duckdb import DuckDBSettings, DuckDBSink, read_request_path
from sinks.settings import Settings


def _sink(path: Path, idle_release_seconds: float) -> DuckDBSink:
    settings = Settings(
        duckdb=DuckDBSettings(
            path=path, max_hold_seconds=3600, idle_release_seconds=idle_release_seconds
        )
    )
    sink = DuckDBSink(settings)
    sink.open()
    values = [m.value for m in Generator(seed=3, malformed_rate=0, batch_rate=0).messages(50)]
    sink.write(normalize_values(values, settings))
    return sink


def _another_process_opens(path: Path) -> bool:
    """Whether a second process can open the warehouse now (the sink's lock is free)."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import duckdb, sys\n"
            "try:\n"
            "    duckdb.connect(sys.argv[1], read_only=True).close()\n"
            "except duckdb.IOException as exc:\n"
            "    sys.exit(3 if 'lock' in str(exc).lower() else 1)\n",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode in (0, 3), probe.stderr
    return probe.returncode == 0


def test_a_short_pause_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    sink = _sink(path, idle_release_seconds=60)
    try:
        sink.on_idle()  # a flush interval without input, well inside the release time
        assert not _another_process_opens(path)
    finally:
        sink.close()
    assert _another_process_opens(path)


def test_the_file_goes_after_idle_release_seconds_without_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    sink = _sink(path, idle_release_seconds=0.5)
    sink.on_idle()
    assert not _another_process_opens(path)
    time.sleep(0.6)
    sink.on_idle()
    assert _another_process_opens(path)
    wal = path.with_name(path.name + ".wal")
    assert not wal.exists() or wal.stat().st_size == 0, "letting the file go checkpoints it"


@pytest.mark.parametrize(
    ("idle_release_seconds", "reader_waits"),
    [(60, True), (0, False)],
    ids=["a waiting reader", "idle_release_seconds=0"],
)
def test_the_idle_file_goes_at_the_first_idle_moment(
    tmp_path: Path, idle_release_seconds: float, reader_waits: bool
) -> None:
    path = tmp_path / "wh.duckdb"
    sink = _sink(path, idle_release_seconds)
    if reader_waits:
        read_request_path(path).write_text("12345")
    sink.on_idle()
    assert _another_process_opens(path)


def test_a_sink_that_has_only_opened_the_file_lets_it_go_when_idle(tmp_path: Path) -> None:
    # The worker opens the warehouse at start-up (tables show early), then idles.
    path = tmp_path / "wh.duckdb"
    sink = DuckDBSink(Settings(duckdb=DuckDBSettings(path=path, idle_release_seconds=60)))
    sink.open()
    sink.on_idle()
    assert _another_process_opens(path)
