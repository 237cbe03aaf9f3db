"""Shared fixtures: one real broker per test session, isolated topics per test.

Every end-to-end test gets its own topic names and consumer-group prefix on
the session's broker, and its own warehouse file, so tests never see each
other's data.  Workers are the real ``etl worker`` processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

# Tests must not inherit a developer's configuration.
for _name in list(os.environ):
    if _name == "ETL_BQEMU_VENV":  # where the test harness keeps the BigQuery emulator
        continue
    if _name.startswith("ETL_") or _name.startswith(("POSTHOG_", "RUDDERSTACK_", "SNOWFLAKE_")):
        del os.environ[_name]

from etl.compiled import stale_modules  # noqa: E402
from etl.config import KafkaSettings  # noqa: E402
from ops.harness.broker import EmbeddedBroker  # noqa: E402
from ops.harness.local_pipeline import LocalPipeline  # noqa: E402
from sinks.duckdb import DuckDBSettings, DuckDBSink  # noqa: E402
from sinks.settings import Settings  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    # The compiled hot path is what the tests exercise: an edit since the build must not
    # pass unseen.
    stale = stale_modules()
    if stale:
        pytest.exit(f"{', '.join(stale)} changed after the compiled build: run `make compile`", 2)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log")
    try:
        b.start()
    except Exception as exc:  # a test must fail with the reason, never skip
        pytest.fail(f"cannot start the bundled broker: {exc}")
    yield b
    b.stop()


def isolated_settings(
    broker: EmbeddedBroker,
    tmp_path: Path,
    *,
    sinks: tuple[str, ...] = ("duckdb",),
    partitions: int = 2,
    **overrides: Any,
) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        partitions=partitions,
        raw_topic=f"raw-{suffix}",
        normalized_topic=f"normalized-{suffix}",
        dlq_topic=f"dlq-{suffix}",
        group_prefix=f"t{suffix}",
    )
    return Settings(
        kafka=kafka,
        sinks=list(sinks),
        duckdb=DuckDBSettings(path=tmp_path / f"warehouse-{suffix}.duckdb"),
        data_dir=tmp_path / f"state-{suffix}",
        **overrides,
    )


@pytest.fixture
def make_pipeline(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Callable[..., LocalPipeline]]:
    """``make_pipeline(sinks=("duckdb",), partitions=2, extra_env=None, **settings)`` ->
    LocalPipeline (not started).
    """
    created: list[LocalPipeline] = []

    def factory(*, extra_env: dict[str, str] | None = None, **kwargs: Any) -> LocalPipeline:
        settings = isolated_settings(broker, tmp_path, **kwargs)
        pipeline = LocalPipeline.create(
            settings, tmp_path / f"work-{settings.kafka.group_prefix}", extra_env
        )
        created.append(pipeline)
        return pipeline

    yield factory
    for p in created:
        p.stop()


def warehouse_rows(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    from sinks.duckdb import wait_for_lock

    con = wait_for_lock(path, timeout=30)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def stored_dead_letter(offset: int, reason: str = "invalid_json") -> dict[str, Any]:
    """A dead letter as a sink receives it from the dead-letter topic: the normalize
    stage's record for raw offset ``offset`` (its id hashes those coordinates).
    """
    import orjson

    from mappers.deadletter import dead_letter, dumps_dead_letter
    from mappers.errors import Rejection

    rejection = Rejection(reason, "test", None, b"{")
    letter = dead_letter(
        rejection, stage="normalize", topic="raw", partition=0, offset=offset, raw_limit=1024
    )
    return orjson.loads(dumps_dead_letter(letter))


def replace_dead_letters_on_and_off_their_range(
    write_rejected: Callable[[list[dict[str, Any]]], None],
) -> list[tuple[str, str, int]]:
    """Dead-letter writes a warehouse sink must replace on; returns the rows
    ``SELECT rejection_id, reason, source_offset ... ORDER BY source_offset`` gives after.

    A letter whose id hashes its coordinates is looked for in its offsets' range
    only (a redelivery, here), a foreign record's id everywhere (here: the second
    letter's id, sent with another offset).
    """
    first, second = stored_dead_letter(5), stored_dead_letter(900)
    write_rejected([first, second])
    write_rejected([stored_dead_letter(5, "schema_violation")])
    foreign = stored_dead_letter(70_000, "unreadable_record")
    write_rejected([{**foreign, "rejection_id": second["rejection_id"]}])
    return [
        (first["rejection_id"], "schema_violation", 5),
        (second["rejection_id"], "unreadable_record", 70_000),
    ]


@contextlib.contextmanager
def warehouse_lock_held(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the DuckDB file's write lock for ``seconds``, from the
    moment this yields; on leaving, waits for it to let go.
    """
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            "con = duckdb.connect(sys.argv[1])\n"
            "print('held', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n",
            str(path),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.wait(timeout=60)


class DeleteProfiles:
    """The sink's connection, with DuckDB's profile of each DELETE it runs kept.

    Only observes: every call goes to the real connection.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, out: Path) -> None:
        self._con = con
        self._out = out
        self.scans: list[dict[str, Any]] = []
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute(f"PRAGMA profiling_output = '{out}'")

    def execute(self, sql: str, *args: Any) -> Any:
        result = self._con.execute(sql, *args)
        if sql.lstrip().upper().startswith("DELETE"):
            # A DELETE ... RETURNING runs as its rows are fetched.
            rows = result.fetchall()
            self.scans.extend(table_scans(json.loads(self._out.read_text())))
            return _Fetched(rows)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


class _Fetched:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchall(self) -> list[Any]:
        return self._rows


def table_scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node] if node.get("name") == "SEQ_SCAN" else []
    for child in node.get("operator", []) + node.get("children", []):
        found += table_scans(child)
    return found


def warehouse_filled_by(tmp_path: Path, sql: str) -> tuple[DuckDBSink, Path]:
    """A DuckDB sink (held file) on a fresh warehouse with its tables, after ``sql``
    filled them by hand; returns the sink and the file."""
    path = tmp_path / "wh.duckdb"
    sink = DuckDBSink(Settings(duckdb=DuckDBSettings(path=path, max_hold_seconds=3600)))
    sink.open()
    sink.close()
    con = duckdb.connect(str(path))
    try:
        con.execute(sql)
    finally:
        con.close()
    return sink, path
