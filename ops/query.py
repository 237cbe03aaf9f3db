"""``etl query``: read-only SQL against the embedded warehouse.

Read-only in every sense: the file is opened read-only, with DuckDB's
external access disabled and its configuration locked (no ``COPY ... TO``,
no ``read_csv('/etc/...')``, no ``ATTACH``, no extensions), and only one
query statement (SELECT, EXPLAIN, PRAGMA, SHOW/DESCRIBE) is accepted.  While
the sink holds the write lock, the query leaves a read request and the sink
lets it in after its current batch (see ``sinks.duckdb``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import duckdb
import orjson

from sinks.duckdb import wait_for_lock

#: Statements a read-only query may run.
READ_STATEMENTS = frozenset(
    {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA}
)


class QueryError(Exception):
    """A user error of ``etl query`` (the CLI prints it as one line and exits 2)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _on_wait(pid: int | None) -> None:
    who = f"PID {pid}" if pid is not None else "another process"
    print(f"etl query: the warehouse is being written by {who}; retrying", file=sys.stderr)


def fetch(
    sql: str, warehouse: Path, timeout: float = 30.0
) -> tuple[list[str], list[tuple[object, ...]]]:
    """Run one read-only statement; returns (columns, rows).  Raises QueryError."""
    path = Path(warehouse)
    if not path.exists():
        raise QueryError(f"no warehouse at {path} (run `etl demo` or a worker first)")
    try:
        con = wait_for_lock(path, timeout=timeout, lockdown=True, on_wait=_on_wait)
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise QueryError(
                f"the warehouse {path} stayed locked for {timeout:.0f}s; try again"
            ) from None
        raise QueryError(f"cannot open the warehouse {path}: {_one_line(exc)}") from None
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryError(_one_line(exc)) from None
        if not statements:
            raise QueryError("SQL: no statement given")
        if len(statements) > 1:
            raise QueryError(
                f"SQL: {len(statements)} statements given; run one statement at a time"
            )
        if statements[0].type not in READ_STATEMENTS:
            kind = statements[0].type.name
            raise QueryError(f"SQL: {kind} is not allowed; etl query only reads (SELECT)")
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description or []]
            rows = cur.fetchall()
        except duckdb.Error as exc:
            raise QueryError(_one_line(exc)) from None
    finally:
        con.close()
    return columns, rows


def run_query(sql: str, warehouse: Path, fmt: str = "table") -> None:
    columns, rows = fetch(sql, warehouse)
    if fmt == "json":
        for row in rows:
            sys.stdout.write(
                orjson.dumps(dict(zip(columns, row, strict=True)), default=str).decode() + "\n"
            )
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns)
        for row in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        Console().print(table)
        print(f"({len(rows)} rows)")
