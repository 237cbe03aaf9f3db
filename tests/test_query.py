"""``etl query``: one read-only statement, one-line errors, and a lock that only makes it wait.

The real CLI in a subprocess against a real DuckDB file; the writer holding
the lock is another real process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from tests.conftest import warehouse_lock_held


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE events (message_id VARCHAR, event VARCHAR)")
    con.execute("INSERT INTO events VALUES ('m1', 'tool_used'), ('m2', 'flow_executed')")
    con.close()
    return path


def etl_query(warehouse: Path, sql: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "query", "--warehouse", str(warehouse), *extra, sql],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_select_answers(warehouse: Path) -> None:
    done = etl_query(warehouse, "SELECT count(*) AS n FROM events", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"n": 2}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 1; SELECT 2", "2 statements given; run one statement at a time"),
        ("DELETE FROM events", "DELETE is not allowed"),
        ("CREATE TABLE x (a INT)", "CREATE is not allowed"),
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM nope", "nope does not exist"),
    ],
)
def test_errors_are_one_line_exit_2(warehouse: Path, sql: str, message: str) -> None:
    done = etl_query(warehouse, sql)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_nothing_outside_the_warehouse_is_read_or_written(warehouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for sql in (
        f"COPY events TO '{out}'",
        f"SELECT * FROM (COPY events TO '{out}')",
        f"SELECT * FROM read_csv('{secret}')",
        f"ATTACH '{tmp_path / 'other.duckdb'}'",
        "SET enable_external_access = true",
    ):
        done = etl_query(warehouse, sql)
        assert done.returncode == 2, (sql, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()
    assert not (tmp_path / "other.duckdb").exists()
    # And the warehouse is unchanged.
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(2,)]
    finally:
        con.close()


def test_a_held_lock_gives_one_line_then_the_answer(warehouse: Path) -> None:
    with warehouse_lock_held(warehouse, 3) as holder:
        started = time.monotonic()
        done = etl_query(warehouse, "SELECT count(*) AS n FROM events", "--format", "json")
        waited = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"n": 2}
    lines = done.stderr.strip().splitlines()
    assert lines == [f"etl query: the warehouse is being written by PID {holder.pid}; retrying"]
    assert waited > 1.0  # it really waited for the writer
    assert not warehouse.with_name(warehouse.name + ".read-request").exists()
