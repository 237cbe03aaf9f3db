"""Which message ids the DuckDB warehouse already holds, found without a scan of ``events``.

Every batch replaces the rows whose ``message_id`` it carries, and finding
them is a join over the whole ``message_id`` column: random UUIDs give
DuckDB's zone maps nothing to prune, so the search grows with the table
(about 100 ms per 5,000-row batch at 1M rows, 250 ms to a second at 10M).
``_etl_message_ids`` holds one 64-bit hash per ``events`` row; the same join
over that eight-byte column is about ten times cheaper.  ``events`` is
searched only for the ids whose hash is already there: a redelivery, a replay
or a hash collision, each handled exactly as before.

The invariant is one hash row per ``events`` row.  The sink keeps it inside
each batch's transaction and erasure inside its own.  Anything else that
changes ``events`` (an analyst's INSERT, an older version of this job)
changes its row count, and the table is rebuilt from ``events`` the next time
a sink opens the file, before it writes.  A hash without its row (a
collision) costs a needless search and nothing else.  What the counts
cannot see is another program changing ``message_id`` values, or deleting
and inserting exactly as many rows, between two of the sink's holds: the new
ids would have no hash, and a redelivery of one would land twice.
"""

from __future__ import annotations

import logging

import duckdb

log = logging.getLogger("etl.sinks.duckdb")

TABLE = "_etl_message_ids"
COLUMN = "message_id_hash"
# md5 is fixed by its RFC, so no DuckDB upgrade can change a stored value
# (DuckDB's own hash() makes no such promise).
HASH = "md5_number_lower"


def reconcile(con: duckdb.DuckDBPyConnection) -> None:
    """Create the table, or rebuild it from ``events`` when the two row counts differ.

    Runs inside the caller's transaction; two counts cost about a millisecond at 10M rows.
    """
    exists = _scalar(
        con,
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = ?",
        [TABLE],
    )
    events = _scalar(con, "SELECT count(*) FROM events")
    held = _scalar(con, f"SELECT count(*) FROM {TABLE}") if exists else None
    if held == events:
        return
    con.execute(
        f"CREATE OR REPLACE TABLE {TABLE} AS SELECT {HASH}(message_id) AS {COLUMN} FROM events"
    )
    log.info(
        "duplicate index %s %s from events (%d rows)",
        TABLE,
        "built" if held is None else f"rebuilt: it held {held} hashes",
        events,
    )


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[str] | None = None) -> int:
    return int(con.execute(sql, params or []).fetchall()[0][0])


def recorded(con: duckdb.DuckDBPyConnection, staging: str) -> list[str]:
    """The staged message ids whose hash is recorded: the only ones ``events`` may hold."""
    return [
        r[0]
        for r in con.execute(
            f"SELECT s.message_id FROM {staging} AS s "
            f"SEMI JOIN {TABLE} AS m ON m.{COLUMN} = {HASH}(s.message_id)"
        ).fetchall()
    ]


def record(con: duckdb.DuckDBPyConnection, staging: str, replaced: list[str]) -> None:
    """Add a hash for each staged row that is new to ``events`` (a replaced row has its hash)."""
    con.execute(
        f"INSERT INTO {TABLE} SELECT {HASH}(message_id) FROM {staging} "
        "WHERE message_id NOT IN (SELECT unnest($replaced::VARCHAR[]))",
        {"replaced": replaced},
    )


def forget(con: duckdb.DuckDBPyConnection, message_ids: list[str]) -> None:
    """Drop the hashes of deleted ``events`` rows, then make sure the counts agree.

    A hash shared by an erased id and a kept one goes too; :func:`reconcile`
    then sees one hash too few and rebuilds, in the same transaction.
    """
    con.execute(
        f"DELETE FROM {TABLE} WHERE {COLUMN} IN (SELECT {HASH}(unnest($mids::VARCHAR[])))",
        {"mids": message_ids},
    )
    reconcile(con)
