"""The flag database: ``feature_flags`` in PostgreSQL, or an embedded SQLite file.

Created and upgraded by versioned migrations (``schema_migrations``), safe to
run concurrently.  A flag row describes targeting (users, workspaces), a
rollout percentage and variants; :meth:`StoredFlag.evaluate` decides it with
PostHog's bucketing (``mappers.flags.bucketing``).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson

from etl.config import FlagSettings
from mappers.flags.bucketing import bucket, pick_variant
from mappers.flags.decision import FlagDecision

log = logging.getLogger("etl.flags")


@dataclass(frozen=True, slots=True)
class StoredFlag:
    """One row of ``feature_flags``.

    ``target_users`` / ``target_workspaces``: when either is non-empty only
    matching users or workspaces are eligible (a PostHog condition with those
    properties); ``rollout_percentage`` (None = 100) then admits a share of
    the eligible ones, bucketed by distinct_id (``bucket_by="user"``) or by
    workspace (``"workspace"``, like a PostHog group flag).  ``variants`` are
    ``{"key", "rollout_percentage", "payload"?}`` whose percentages sum to 100.
    """

    key: str
    enabled: bool = True
    rollout_percentage: float | None = None
    variants: tuple[dict[str, Any], ...] = ()
    target_workspaces: tuple[str, ...] = ()
    target_users: tuple[str, ...] = ()
    bucket_by: Literal["user", "workspace"] = "user"
    description: str | None = None
    updated_at: str | None = None

    def __post_init__(self) -> None:
        if not self.key or not isinstance(self.key, str):
            raise ValueError("a flag needs a non-empty key")
        if self.rollout_percentage is not None and not 0 <= self.rollout_percentage <= 100:
            raise ValueError(f"flag {self.key}: rollout_percentage must be within 0..100")
        if self.bucket_by not in ("user", "workspace"):
            raise ValueError(f"flag {self.key}: bucket_by must be user or workspace")
        if self.variants:
            keys = [v.get("key") for v in self.variants]
            if any(not isinstance(k, str) or not k for k in keys) or len(set(keys)) != len(keys):
                raise ValueError(f"flag {self.key}: variants need distinct non-empty keys")
            total = sum(float(v.get("rollout_percentage", -1)) for v in self.variants)
            if (
                any(float(v.get("rollout_percentage", -1)) < 0 for v in self.variants)
                or abs(total - 100) > 1e-6
            ):
                raise ValueError(
                    f"flag {self.key}: variant rollout percentages must be >= 0 and sum to 100"
                )

    def evaluate(self, distinct_id: str | None, workspace_id: str | None) -> FlagDecision:
        if not self.enabled:
            return FlagDecision(self.key, False, None, "db")
        if self.target_users or self.target_workspaces:
            targeted = (distinct_id is not None and distinct_id in self.target_users) or (
                workspace_id is not None and workspace_id in self.target_workspaces
            )
            if not targeted:
                return FlagDecision(self.key, False, None, "db")
        bucketing = workspace_id if self.bucket_by == "workspace" else (distinct_id or workspace_id)
        if self.rollout_percentage is not None and self.rollout_percentage < 100:
            if bucketing is None or bucket(self.key, bucketing) > self.rollout_percentage / 100:
                return FlagDecision(self.key, False, None, "db")
        variant = payload = None
        if self.variants:
            variant = pick_variant(
                self.key, bucketing if bucketing is not None else "", self.variants
            )
            payload = next((v.get("payload") for v in self.variants if v["key"] == variant), None)
        return FlagDecision(self.key, True, variant, "db", payload)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "enabled": self.enabled,
            "rollout_percentage": self.rollout_percentage,
            "variants": list(self.variants),
            "target_workspaces": list(self.target_workspaces),
            "target_users": list(self.target_users),
            "bucket_by": self.bucket_by,
            "description": self.description,
            "updated_at": self.updated_at,
        }


_COLUMNS = (
    "key, enabled, rollout_percentage, variants, target_workspaces, target_users, bucket_by, "
    "description, updated_at"
)

# Versioned migrations, per dialect.  Applied in order, each once, recorded in
# schema_migrations; never edit a released one, add the next version.
MIGRATIONS: tuple[tuple[int, str, dict[str, str]], ...] = (
    (
        1,
        "create feature_flags",
        {
            "postgresql": """
                CREATE TABLE IF NOT EXISTS feature_flags (
                    key TEXT PRIMARY KEY,
                    enabled BOOLEAN NOT NULL DEFAULT TRUE,
                    rollout_percentage DOUBLE PRECISION
                        CHECK (rollout_percentage IS NULL OR rollout_percentage BETWEEN 0 AND 100),
                    variants TEXT NOT NULL DEFAULT '[]',
                    target_workspaces TEXT NOT NULL DEFAULT '[]',
                    target_users TEXT NOT NULL DEFAULT '[]',
                    bucket_by TEXT NOT NULL DEFAULT 'user' CHECK (bucket_by IN ('user', 'workspace')),
                    description TEXT,
                    updated_at TEXT NOT NULL
                )""",  # noqa: E501  (a released migration is never edited)
            "sqlite": """
                CREATE TABLE IF NOT EXISTS feature_flags (
                    key TEXT PRIMARY KEY,
                    enabled BOOLEAN NOT NULL DEFAULT 1,
                    rollout_percentage REAL
                        CHECK (rollout_percentage IS NULL OR rollout_percentage BETWEEN 0 AND 100),
                    variants TEXT NOT NULL DEFAULT '[]',
                    target_workspaces TEXT NOT NULL DEFAULT '[]',
                    target_users TEXT NOT NULL DEFAULT '[]',
                    bucket_by TEXT NOT NULL DEFAULT 'user' CHECK (bucket_by IN ('user', 'workspace')),
                    description TEXT,
                    updated_at TEXT NOT NULL
                )""",  # noqa: E501  (a released migration is never edited)
        },
    ),
)
# Serialises concurrent migrators on PostgreSQL (any constant; "etlflags").
_PG_MIGRATION_LOCK = 0x65746C666C616773


def mask_url(url: str) -> str:
    """A database URL fit for logs: the password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=netloc[0].split(":", 1)[0] + ":***@" + netloc[1]))


class FlagStore:
    """The ``feature_flags`` table in PostgreSQL (``database_url``) or SQLite
    (``embedded_path``).
    """

    def __init__(
        self,
        database_url: str | None = None,
        embedded_path: Path | str = "flags.sqlite3",
        timeout: float = 2.0,
    ) -> None:
        self.database_url = database_url
        self.embedded_path = Path(embedded_path)
        self.timeout = timeout
        self.dialect: Literal["postgresql", "sqlite"] = "postgresql" if database_url else "sqlite"

    @classmethod
    def from_settings(cls, flags: FlagSettings) -> FlagStore:
        return cls(flags.database_url, flags.embedded_path, flags.db_timeout)

    def describe(self) -> str:
        return mask_url(self.database_url) if self.database_url else f"sqlite:{self.embedded_path}"

    # ----------------------------------------------------------- connections
    def _connect(self, *, create: bool) -> Any:
        if self.dialect == "postgresql":
            import psycopg

            return psycopg.connect(
                self.database_url,  # type: ignore[arg-type]
                connect_timeout=max(1, int(round(self.timeout))),
                options=f"-c statement_timeout={int(self.timeout * 1000)}",
            )
        if create:
            self.embedded_path.parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(self.embedded_path, timeout=self.timeout, isolation_level=None)
        # Reading never creates the file: no store file = no stored flags.
        return sqlite3.connect(
            f"file:{self.embedded_path}?mode=ro",
            uri=True,
            timeout=self.timeout,
            isolation_level=None,
        )

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?") if self.dialect == "sqlite" else sql

    # ------------------------------------------------------------ migrations
    def migrate(self) -> list[int]:
        """Apply pending migrations; idempotent and safe to run concurrently. Returns versions
        applied.
        """
        con = self._connect(create=True)
        applied: list[int] = []
        try:
            if self.dialect == "sqlite":
                con.execute("BEGIN IMMEDIATE")
            else:
                con.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_MIGRATION_LOCK,))
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            done = {
                row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()
            }
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                con.execute(statements[self.dialect])
                con.execute(
                    self._sql(
                        "INSERT INTO schema_migrations (version, name, applied_at) "
                        "VALUES (%s, %s, %s)"
                    ),
                    (version, name, _now()),
                )
                applied.append(version)
            con.execute("COMMIT") if self.dialect == "sqlite" else con.commit()
        except BaseException:
            con.execute("ROLLBACK") if self.dialect == "sqlite" else con.rollback()
            raise
        finally:
            con.close()
        if applied:
            log.info("flag store %s: applied migrations %s", self.describe(), applied)
        return applied

    def migrations(self) -> list[tuple[int, str, str]]:
        con = self._connect(create=False)
        try:
            return [
                tuple(r)
                for r in con.execute(
                    "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
                ).fetchall()
            ]
        finally:
            con.close()

    # ---------------------------------------------------------------- access
    def load(self) -> dict[str, StoredFlag]:
        """All stored flags.  A store not created yet holds none; an unreachable one raises."""
        if self.dialect == "sqlite" and not self.embedded_path.exists():
            return {}
        con = self._connect(create=False)
        try:
            try:
                rows = con.execute(f"SELECT {_COLUMNS} FROM feature_flags").fetchall()
            except Exception as exc:  # noqa: BLE001 - only "no such table" is an empty store
                if _missing_table(exc):
                    return {}
                raise
        finally:
            con.close()
        return {row[0]: _row_to_flag(row) for row in rows}

    def upsert(self, flag: StoredFlag) -> StoredFlag:
        self.migrate()
        stamped = dataclasses.replace(flag, updated_at=_now())
        values = _flag_to_row(stamped)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[1:])
        sql = self._sql(
            f"INSERT INTO feature_flags ({_COLUMNS}) VALUES ({', '.join(['%s'] * 9)}) "
            f"ON CONFLICT (key) DO UPDATE SET {updates}"
        )
        con = self._connect(create=True)
        try:
            con.execute(sql, values)
            if self.dialect == "postgresql":
                con.commit()
        finally:
            con.close()
        return stamped

    def delete(self, key: str) -> bool:
        self.migrate()
        con = self._connect(create=True)
        try:
            cur = con.execute(self._sql("DELETE FROM feature_flags WHERE key = %s"), (key,))
            if self.dialect == "postgresql":
                con.commit()
            return cur.rowcount > 0
        finally:
            con.close()


def _missing_table(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return "no such table" in str(exc)
    try:
        import psycopg.errors

        return isinstance(exc, psycopg.errors.UndefinedTable)
    except ImportError:  # pragma: no cover - psycopg is installed with the postgres extra
        return False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _flag_to_row(flag: StoredFlag) -> tuple[Any, ...]:
    return (
        flag.key,
        bool(flag.enabled),
        flag.rollout_percentage,
        orjson.dumps(list(flag.variants)).decode(),
        orjson.dumps(list(flag.target_workspaces)).decode(),
        orjson.dumps(list(flag.target_users)).decode(),
        flag.bucket_by,
        flag.description,
        flag.updated_at,
    )


def _row_to_flag(row: tuple[Any, ...]) -> StoredFlag:
    key, enabled, rollout, variants, workspaces, users, bucket_by, description, updated_at = row
    return StoredFlag(
        key=key,
        enabled=bool(enabled),
        rollout_percentage=None if rollout is None else float(rollout),
        variants=tuple(orjson.loads(variants or "[]")),
        target_workspaces=tuple(orjson.loads(workspaces or "[]")),
        target_users=tuple(orjson.loads(users or "[]")),
        bucket_by=bucket_by or "user",
        description=description,
        updated_at=str(updated_at) if updated_at is not None else None,
    )
