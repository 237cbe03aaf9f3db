"""``etl query``: read-only SQL against the embedded warehouse."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import duckdb
import orjson

from sinks.duckdb import wait_for_lock


def run_query(sql: str, warehouse: Path, fmt: str = "table") -> None:
    path = warehouse
    if not Path(path).exists():
        raise SystemExit(f"etl query: no warehouse at {path} (run `etl demo` or a worker first)")
    con = wait_for_lock(Path(path), timeout=30)
    try:
        try:
            cur = con.execute(sql)
        except duckdb.Error as exc:
            raise SystemExit(f"etl query: {exc}") from None
        columns = [d[0] for d in cur.description or []]
        rows = cur.fetchall()
    finally:
        con.close()
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
