"""Erasing people from the MERGE warehouses (Snowflake, BigQuery): one SQL plan, two dialects.

The same tables and the same rule as DuckDB's ``delete_people``: the
people's ``events`` rows (by ``distinct_id``, ``user_id`` or
``anonymous_id``), their typed rows and discards (by ``message_id``, and
typed rows by ``distinct_id`` too), ``users`` and ``aliases`` rows where
those tables exist, and ``rejected_events`` whose raw payload carries one of
the ids as a JSON string.  Every value is a bound parameter; table and
column names come from the schema, never from input.  Rows are counted
before they are deleted (the emulators do not all report DML counts).
"""

from __future__ import annotations

from typing import Any

import orjson

#: Columns that hold a person's id, in the users and aliases tables (whichever exist).
PERSON_ID_COLUMNS = (
    "distinct_id",
    "user_id",
    "anonymous_id",
    "alias",
    "alias_id",
    "previous_id",
    "canonical_id",
    "person_id",
)


class Binder:
    """Collects parameters for one statement; each dialect renders a placeholder."""

    def __init__(self, placeholder: Any) -> None:
        self.placeholder = placeholder
        self.params: dict[str, str] = {}

    def one(self, value: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return self.placeholder(name)

    def in_list(self, column: str, values: list[str]) -> str:
        if not values:
            return "FALSE"
        return f"{column} IN ({', '.join(self.one(v) for v in values)})"


class PeopleErasure:
    """Mixin for a MERGE warehouse sink; the sink supplies the dialect hooks below."""

    # -- dialect hooks -----------------------------------------------------
    def _erase_binder(self) -> Binder:
        raise NotImplementedError

    def _erase_rows(self, sql: str, binder: Binder) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _erase_table(self, table: str) -> str:
        raise NotImplementedError

    def _erase_column(self, column: str) -> str:
        raise NotImplementedError

    def _erase_contains(self, column: str, needle: str) -> str:
        raise NotImplementedError

    def _erase_existing_columns(self, table: str) -> list[str]:
        """Lower-case column names of ``table``; empty when it does not exist."""
        raise NotImplementedError

    # -- shared plan -------------------------------------------------------
    def _people_where(self, binder: Binder, ids: list[str], columns: list[str]) -> str:
        return " OR ".join(binder.in_list(self._erase_column(c), ids) for c in columns)

    def _count_and_delete(self, table: str, where_of: Any) -> int:
        binder = self._erase_binder()
        where = where_of(binder)
        t = self._erase_table(table)
        (count,) = self._erase_rows(f"SELECT COUNT(*) FROM {t} WHERE {where}", binder)[0]
        if count:
            binder = self._erase_binder()
            self._erase_rows(f"DELETE FROM {t} WHERE {where_of(binder)}", binder)
        return int(count)

    def person_ids(self, ids: set[str]) -> set[str]:
        def linked() -> set[str]:
            self._ready()  # type: ignore[attr-defined]
            found = set(ids)
            alias_cols = [
                c for c in self._erase_existing_columns("aliases") if c in PERSON_ID_COLUMNS
            ]
            for _ in range(10):
                before = len(found)
                known = sorted(found)
                b = self._erase_binder()
                where = self._people_where(b, known, ["distinct_id", "user_id"])
                cols = f"{self._erase_column('distinct_id')}, {self._erase_column('anonymous_id')}"
                rows = self._erase_rows(
                    f"SELECT {cols} FROM {self._erase_table('events')} WHERE {where}", b
                )
                found.update(v for row in rows for v in row if v)
                if alias_cols:
                    b = self._erase_binder()
                    where = self._people_where(b, known, alias_cols)
                    cols = ", ".join(self._erase_column(c) for c in alias_cols)
                    rows = self._erase_rows(
                        f"SELECT {cols} FROM {self._erase_table('aliases')} WHERE {where}", b
                    )
                    found.update(str(v) for row in rows for v in row if v)
                if len(found) == before:
                    break
            return found

        return self._guard(linked)  # type: ignore[attr-defined]

    def delete_people(self, ids: set[str]) -> dict[str, int]:
        wanted = sorted(ids)

        def erase() -> dict[str, int]:
            self._ready()  # type: ignore[attr-defined]
            b = self._erase_binder()
            where = self._people_where(b, wanted, ["distinct_id", "user_id", "anonymous_id"])
            mids = [
                r[0]
                for r in self._erase_rows(
                    f"SELECT {self._erase_column('message_id')} FROM "
                    f"{self._erase_table('events')} WHERE {where}",
                    b,
                )
            ]
            counts: dict[str, int] = {}
            mid = self._erase_column("message_id")
            did = self._erase_column("distinct_id")
            # Typed rows and discards before events: a crash leaves events to find them by.
            for table in self.schema.tables:  # type: ignore[attr-defined]
                counts[table] = self._count_and_delete(
                    table, lambda b: f"{b.in_list(mid, mids)} OR {b.in_list(did, wanted)}"
                )
            counts["schema_discards"] = self._count_and_delete(
                "schema_discards", lambda b: b.in_list(mid, mids)
            )
            for table in ("users", "aliases"):
                cols = [c for c in self._erase_existing_columns(table) if c in PERSON_ID_COLUMNS]
                if cols:
                    counts[table] = self._count_and_delete(
                        table, lambda b, cols=cols: self._people_where(b, wanted, cols)
                    )
            needles = [orjson.dumps(i).decode() for i in wanted]
            raw = self._erase_column("raw_payload")
            counts["rejected_events"] = self._count_and_delete(
                "rejected_events",
                lambda b: " OR ".join(
                    [b.in_list(mid, mids)] + [self._erase_contains(raw, b.one(n)) for n in needles]
                ),
            )
            counts["events"] = self._count_and_delete(
                "events",
                lambda b: self._people_where(b, wanted, ["distinct_id", "user_id", "anonymous_id"]),
            )
            return counts

        return self._guard(erase)  # type: ignore[attr-defined]
