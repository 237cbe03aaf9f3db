"""Feature-flag decisions: PostHog first, then the flag database, then the default.

A decision is made for a ``(flag key, distinct_id, workspace_id)`` triple:

1. **PostHog** (``posthog.api_key`` and ``posthog.personal_api_key`` set;
   ``flags.posthog_mode``).  The posthog SDK evaluates locally from the
   definitions it polls from ``/flags/definitions``: rollouts, variants and
   workspace group flags (``groups={"workspace": workspace_id}``).  A flag
   that PostHog defines but cannot decide locally (cohorts, experience
   continuity, person properties), or any flag while no definitions could be
   loaded, is asked of the remote ``/flags`` endpoint.  Without a personal key
   PostHog is consulted only in ``posthog_mode=remote`` (one /flags call per
   user per TTL - costly on a busy stream, hence opt-in).  A flag PostHog does not define is left to the next
   source.  When PostHog is unreachable the SDK keeps the last definitions it
   loaded, so PostHog still decides what it knew.
2. **The flag database** (``feature_flags`` table): PostgreSQL when
   ``flags.database_url`` is set, else an embedded SQLite file.  Rollouts
   bucket ids exactly like PostHog (:func:`bucket`), so moving a flag between
   PostHog and the database keeps every user on the same side.
3. **Default**: the gate is open.  With no source configured every gate is open.

Every decision carries its ``source`` (``posthog`` / ``db`` / ``default``).

Never blocking the stream: decisions are cached (``flags.cache_ttl``), the SDK
polls definitions and a background thread reloads the database every
``cache_ttl / 2`` (a cached decision is dropped as soon as either changes, and
lives at most ``cache_ttl``, so a change takes effect within ``cache_ttl``).
A remote ``/flags`` call has a short timeout (``flags.remote_timeout``), a
failure stops remote calls for ``flags.remote_backoff`` seconds, and a batch
may spend at most ``flags.remote_budget`` seconds on them; whatever PostHog
could not decide in time is decided by the database (last loaded snapshot),
then the default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson

from etl.config import FlagSettings, PostHogSettings, Settings

log = logging.getLogger("etl.flags")

Source = Literal["posthog", "db", "default"]
LONG_SCALE = float(0xFFFFFFFFFFFFFFF)
#: Cache entries kept at most; past it the cache starts over (bounded memory).
MAX_CACHED_DECISIONS = 200_000


def bucket(key: str, identifier: Any, salt: str = "") -> float:
    """PostHog's bucket of an id for a flag, in [0, 1]: sha1 of ``"{key}.{id}{salt}"``."""
    digest = hashlib.sha1(f"{key}.{identifier}{salt}".encode()).hexdigest()
    return int(digest[:15], 16) / LONG_SCALE


def pick_variant(key: str, identifier: Any, variants: Iterable[Mapping[str, Any]]) -> str | None:
    """The variant PostHog would pick: consecutive ranges of the ``"variant"``-salted bucket."""
    point = bucket(key, identifier, salt="variant")
    low = 0.0
    for variant in variants:
        high = low + float(variant["rollout_percentage"]) / 100
        if low <= point < high:
            return str(variant["key"])
        low = high
    return None


@dataclass(frozen=True, slots=True)
class FlagDecision:
    key: str
    enabled: bool
    variant: str | None
    source: Source
    payload: Any = None

    def as_context(self) -> dict[str, Any]:
        """The form recorded in an event's ``context.flags.<key>``."""
        return {"enabled": self.enabled, "variant": self.variant, "source": self.source}


def default_decision(key: str) -> FlagDecision:
    return FlagDecision(key, True, None, "default")


# --------------------------------------------------------------------------
# The flag database.


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
            if any(float(v.get("rollout_percentage", -1)) < 0 for v in self.variants) or abs(total - 100) > 1e-6:
                raise ValueError(f"flag {self.key}: variant rollout percentages must be >= 0 and sum to 100")

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
            variant = pick_variant(self.key, bucketing if bucketing is not None else "", self.variants)
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
    "key, enabled, rollout_percentage, variants, target_workspaces, target_users, bucket_by, description, updated_at"
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
                )""",
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
                )""",
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
    """The ``feature_flags`` table in PostgreSQL (``database_url``) or SQLite (``embedded_path``)."""

    def __init__(self, database_url: str | None = None, embedded_path: Path | str = "flags.sqlite3", timeout: float = 2.0) -> None:
        self.database_url = database_url
        self.embedded_path = Path(embedded_path)
        self.timeout = timeout
        self.dialect: Literal["postgresql", "sqlite"] = "postgresql" if database_url else "sqlite"

    @classmethod
    def from_settings(cls, flags: FlagSettings) -> "FlagStore":
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
        return sqlite3.connect(f"file:{self.embedded_path}?mode=ro", uri=True, timeout=self.timeout, isolation_level=None)

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?") if self.dialect == "sqlite" else sql

    # ------------------------------------------------------------ migrations
    def migrate(self) -> list[int]:
        """Apply pending migrations; idempotent and safe to run concurrently. Returns versions applied."""
        con = self._connect(create=True)
        applied: list[int] = []
        try:
            if self.dialect == "sqlite":
                con.execute("BEGIN IMMEDIATE")
            else:
                con.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_MIGRATION_LOCK,))
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                con.execute(statements[self.dialect])
                con.execute(
                    self._sql("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)"),
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
            return [tuple(r) for r in con.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()]  # type: ignore[misc]
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
        sql = self._sql(f"INSERT INTO feature_flags ({_COLUMNS}) VALUES ({', '.join(['%s'] * 9)}) ON CONFLICT (key) DO UPDATE SET {updates}")
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


# --------------------------------------------------------------------------
# PostHog.


class PostHogFlags:
    """Decisions from PostHog through the posthog SDK (local evaluation, remote /flags when needed)."""

    def __init__(self, posthog: PostHogSettings, flags: FlagSettings) -> None:
        from posthog import Posthog

        assert posthog.api_key is not None
        self.api_key = posthog.api_key.get_secret_value()
        self.host = posthog.host
        self.remote_timeout = flags.remote_timeout
        self.remote_backoff = flags.remote_backoff
        personal = posthog.personal_api_key.get_secret_value() if posthog.personal_api_key else None
        # urllib3 logs request URLs at DEBUG; the definitions URL carries the project key.
        url_log = logging.getLogger("urllib3.connectionpool")
        if url_log.getEffectiveLevel() < logging.INFO:
            url_log.setLevel(logging.INFO)
        self.local = personal is not None
        # sync_mode/send=False: this client only evaluates flags; it never
        # queues events (no $feature_flag_called either: send_feature_flag_events=False).
        self.client = Posthog(
            self.api_key,
            host=self.host,
            secret_key=personal,
            sync_mode=True,
            send=False,
            poll_interval=max(0.25, flags.cache_ttl / 2),
            feature_flags_request_timeout_seconds=flags.remote_timeout,
            feature_flags_request_max_retries=0,
            disable_geoip=True,
        )
        self._known_for: Any = None
        self._known: frozenset[str] = frozenset()
        self.remote_blocked_until = 0.0
        self._loaded = threading.Event()

    def start(self, wait: float) -> None:
        """Load definitions (and start the SDK's poller) in the background; wait at most ``wait`` seconds."""
        if not self.local:
            return

        def load() -> None:
            try:
                self.client.load_feature_flags()
            finally:
                self._loaded.set()

        threading.Thread(target=load, name="posthog-flag-definitions", daemon=True).start()
        self._loaded.wait(wait)

    def close(self) -> None:
        self._loaded.wait(1.0)
        try:
            self.client.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down must not fail the worker
            log.warning("posthog flag client shutdown: %s", type(exc).__name__)

    @property
    def definitions(self) -> Any:
        """The definitions list the SDK evaluates with (a new object on each change), or None."""
        return self.client.feature_flags

    def known(self) -> frozenset[str] | None:
        defs = self.client.feature_flags
        if defs is None:
            return None
        if defs is not self._known_for:
            self._known = frozenset(f.get("key") for f in defs if isinstance(f, dict))
            self._known_for = defs
        return self._known

    def decide(self, key: str, distinct_id: str, workspace_id: str | None, remote_allowed: bool) -> FlagDecision | None:
        groups = {"workspace": workspace_id} if workspace_id else {}
        known = self.known()
        if known is not None:
            if key not in known:
                return None  # PostHog does not define it: the database decides
            result = self.client.get_feature_flag_result(
                key, distinct_id, groups=groups, only_evaluate_locally=True, send_feature_flag_events=False
            )
            if result is not None:
                return FlagDecision(key, bool(result.enabled), result.variant, "posthog", result.payload)
        if not remote_allowed or time.monotonic() < self.remote_blocked_until:
            return None
        return self._remote(key, distinct_id, groups)

    def _remote(self, key: str, distinct_id: str, groups: dict[str, str]) -> FlagDecision | None:
        # The SDK's own /flags request (?v=4) and response parsing; called
        # directly, not through Client, because Client swallows errors and we
        # must tell "PostHog is down" (back off) from "flag unknown".
        from posthog.request import flags as flags_request
        from posthog.types import normalize_flags_response

        try:
            response = normalize_flags_response(
                flags_request(
                    self.api_key,
                    self.host,
                    timeout=self.remote_timeout,
                    max_retries=0,
                    distinct_id=distinct_id,
                    groups=groups,
                    person_properties={},
                    group_properties={},
                    geoip_disable=True,
                    flag_keys_to_evaluate=[key],
                )
            )
        except Exception as exc:  # noqa: BLE001 - any failure: back off, fallback decides
            self.remote_blocked_until = time.monotonic() + self.remote_backoff
            log.warning(
                "posthog /flags unavailable (%s); the flag database decides for %.0fs", type(exc).__name__, self.remote_backoff
            )
            return None
        if "feature_flags" in (response.get("quotaLimited") or []):
            self.remote_blocked_until = time.monotonic() + self.remote_backoff
            return None
        detail = response["flags"].get(key)
        if detail is None or getattr(detail, "failed", False):
            return None
        payload = detail.metadata.payload if getattr(detail, "metadata", None) else None
        return FlagDecision(key, bool(detail.enabled), detail.variant, "posthog", payload)


def posthog_configured(settings: Settings) -> bool:
    """Whether PostHog is a flag source: a project key, and a personal key unless remote mode."""
    mode = settings.flags.posthog_mode
    if mode == "off" or settings.posthog.api_key is None:
        return False
    return settings.posthog.personal_api_key is not None or mode == "remote"


# --------------------------------------------------------------------------
# The service.


@dataclass
class _Stats:
    hits: int = 0
    misses: int = 0
    remote_calls: int = 0
    by_source: dict[str, int] = field(default_factory=dict)


class FlagService:
    """``is_enabled`` / ``get_flag_variant`` / ``get_flags`` / ``set_flag`` for (distinct_id, workspace_id)."""

    def __init__(self, settings: Settings, *, use_posthog: bool = True, use_store: bool = True) -> None:
        self.settings = settings
        self.flags = settings.flags
        self.ttl = settings.flags.cache_ttl
        self.posthog: PostHogFlags | None = (
            PostHogFlags(settings.posthog, settings.flags) if use_posthog and posthog_configured(settings) else None
        )
        self.store: FlagStore | None = FlagStore.from_settings(settings.flags) if use_store else None
        self._stored: dict[str, StoredFlag] = {}
        self._store_ok: bool | None = None
        self._cache: dict[tuple[str, str | None, str | None], tuple[float, FlagDecision]] = {}
        self._defs_seen: Any = None
        self._remote_deadline: float | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self.stats = _Stats()

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "FlagService":
        if self.posthog is not None:
            self.posthog.start(self.flags.startup_wait)
        if self.store is not None:
            self.refresh()
            self._refresher = threading.Thread(target=self._refresh_loop, name="flag-store-refresh", daemon=True)
            self._refresher.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=self.flags.db_timeout * 2 + 1)
        if self.posthog is not None:
            self.posthog.close()

    def __enter__(self) -> "FlagService":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(max(0.25, self.ttl / 2)):
            self.refresh()

    def refresh(self) -> bool:
        """Reload the flag database; on failure keep the last snapshot.  Returns success."""
        if self.store is None:
            return False
        try:
            stored = self.store.load()
        except Exception as exc:  # noqa: BLE001 - unreachable store: last snapshot (or none) stands
            if self._store_ok is not False:
                log.warning("flag store %s unavailable (%s); using its last snapshot", self.store.describe(), type(exc).__name__)
            self._store_ok = False
            return False
        if self._store_ok is False:
            log.info("flag store %s reachable again", self.store.describe())
        self._store_ok = True
        if stored != self._stored:
            self._stored = stored
            self.invalidate()
        return True

    def invalidate(self) -> None:
        self._cache = {}

    # -------------------------------------------------------------- deciding
    def begin_batch(self, budget: float | None = None) -> None:
        """Allow at most ``budget`` seconds (default ``flags.remote_budget``) of remote /flags calls from now."""
        self._remote_deadline = time.monotonic() + (self.flags.remote_budget if budget is None else budget)

    def end_batch(self) -> None:
        self._remote_deadline = None

    def decide(self, key: str, distinct_id: str | None = None, workspace_id: str | None = None) -> FlagDecision:
        now = time.monotonic()
        posthog = self.posthog
        if posthog is not None and posthog.client.feature_flags is not self._defs_seen:
            # New PostHog definitions: every cached decision may be stale.
            self._defs_seen = posthog.client.feature_flags
            self._cache = {}
        cache_key = (key, distinct_id, workspace_id)
        entry = self._cache.get(cache_key)
        if entry is not None and entry[0] > now:
            self.stats.hits += 1
            return entry[1]
        self.stats.misses += 1
        decision, cacheable = self._evaluate(key, distinct_id, workspace_id)
        if cacheable:
            cache = self._cache
            if len(cache) >= MAX_CACHED_DECISIONS:
                cache = self._cache = {}
            cache[cache_key] = (now + self.ttl, decision)
        self.stats.by_source[decision.source] = self.stats.by_source.get(decision.source, 0) + 1
        return decision

    def _evaluate(self, key: str, distinct_id: str | None, workspace_id: str | None) -> tuple[FlagDecision, bool]:
        cacheable = True
        if self.posthog is not None:
            deadline = self._remote_deadline
            remote_allowed = deadline is None or time.monotonic() < deadline
            if not remote_allowed:
                # Out of budget: decide from the fallback now, but do not
                # remember it, so PostHog gets its say in a later batch.
                known = self.posthog.known()
                cacheable = known is not None and key not in known
            bucketing_id = distinct_id or workspace_id or ""
            decision = self.posthog.decide(key, bucketing_id, workspace_id, remote_allowed)
            if decision is not None:
                return decision, True
        stored = self._stored.get(key)
        if stored is not None:
            return stored.evaluate(distinct_id, workspace_id), cacheable
        return default_decision(key), cacheable

    def is_enabled(self, key: str, *, distinct_id: str | None = None, workspace_id: str | None = None) -> bool:
        return self.decide(key, distinct_id, workspace_id).enabled

    def get_flag_variant(self, key: str, *, distinct_id: str | None = None, workspace_id: str | None = None) -> str | None:
        """The variant of a multivariate flag, or None (off, or a plain on/off flag)."""
        decision = self.decide(key, distinct_id, workspace_id)
        return decision.variant if decision.enabled else None

    def known_keys(self) -> list[str]:
        keys = set(self._stored)
        if self.posthog is not None:
            keys |= self.posthog.known() or set()
        for mapping in self.flags.gates.values():
            keys |= set(mapping.values())
        return sorted(keys)

    def get_flags(self, *, distinct_id: str | None = None, workspace_id: str | None = None) -> dict[str, FlagDecision]:
        """Decisions for every flag known to any source (and every gating flag)."""
        return {key: self.decide(key, distinct_id, workspace_id) for key in self.known_keys()}

    # ---------------------------------------------------------------- writing
    def set_flag(
        self,
        key: str,
        enabled: bool = True,
        *,
        rollout_percentage: float | None = None,
        variants: Iterable[Mapping[str, Any]] = (),
        target_workspaces: Iterable[str] = (),
        target_users: Iterable[str] = (),
        bucket_by: Literal["user", "workspace"] = "user",
        description: str | None = None,
    ) -> StoredFlag:
        """Write a flag to the flag database (PostHog flags are managed in PostHog)."""
        if self.store is None:
            raise RuntimeError("this flag service has no flag database")
        flag = StoredFlag(
            key=key,
            enabled=enabled,
            rollout_percentage=rollout_percentage,
            variants=tuple(dict(v) for v in variants),
            target_workspaces=tuple(target_workspaces),
            target_users=tuple(target_users),
            bucket_by=bucket_by,
            description=description,
        )
        stored = self.store.upsert(flag)
        self.refresh()
        return stored

    def status(self) -> dict[str, Any]:
        return {
            "posthog": None
            if self.posthog is None
            else {"local": self.posthog.local, "definitions_loaded": self.posthog.definitions is not None},
            "store": None if self.store is None else {"store": self.store.describe(), "reachable": self._store_ok, "flags": len(self._stored)},
            "cache": {"entries": len(self._cache), "hits": self.stats.hits, "misses": self.stats.misses},
        }


# --------------------------------------------------------------------------
# `etl flags` (streams/commands.py).


class FlagCommandError(ValueError):
    """A wrong `etl flags` invocation (shown as usage error)."""


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def parse_variants(text: str | None) -> tuple[dict[str, Any], ...]:
    """``"control:50,test:50"`` or a JSON list -> variant dicts."""
    if not text:
        return ()
    text = text.strip()
    if text.startswith("["):
        return tuple(dict(v) for v in orjson.loads(text))
    out = []
    for part in _csv(text):
        name, sep, pct = part.partition(":")
        if not sep:
            raise FlagCommandError(f"variant {part!r}: write key:percentage")
        out.append({"key": name.strip(), "rollout_percentage": float(pct)})
    return tuple(out)


def run_flags_command(args: list[str], settings: Settings, **opts: Any) -> str:
    if not args:
        raise FlagCommandError("give an action: list | get KEY | set KEY | delete KEY | migrate")
    action, rest = args[0], args[1:]
    store = FlagStore.from_settings(settings.flags)
    as_json = opts.get("json_output", False)
    if action == "migrate":
        applied = store.migrate()
        return orjson.dumps({"store": store.describe(), "applied": applied}).decode() if as_json else (
            f"{store.describe()}: applied {applied}" if applied else f"{store.describe()}: up to date"
        )
    if action == "list":
        flags = sorted(store.load().values(), key=lambda f: f.key)
        if as_json:
            return orjson.dumps([f.as_dict() for f in flags]).decode()
        lines = [f"{'key':32} {'on':3} {'rollout':>7}  variants / targets"]
        for f in flags:
            extra = ", ".join(f"{v['key']}:{v['rollout_percentage']:g}" for v in f.variants)
            if f.target_workspaces:
                extra += f" workspaces={','.join(f.target_workspaces)}"
            if f.target_users:
                extra += f" users={','.join(f.target_users)}"
            rollout = "-" if f.rollout_percentage is None else f"{f.rollout_percentage:g}%"
            lines.append(f"{f.key:32} {'yes' if f.enabled else 'no':3} {rollout:>7}  {extra.strip()}")
        return "\n".join(lines)
    if len(rest) != 1:
        raise FlagCommandError(f"{action} needs exactly one flag KEY")
    key = rest[0]
    if action == "set":
        try:
            flag = store.upsert(
                StoredFlag(
                    key=key,
                    enabled=opts["enabled"],
                    rollout_percentage=opts.get("rollout"),
                    variants=parse_variants(opts.get("variants")),
                    target_workspaces=_csv(opts.get("workspaces")),
                    target_users=_csv(opts.get("users")),
                    bucket_by=opts.get("bucket_by") or "user",
                    description=opts.get("description"),
                )
            )
        except ValueError as exc:
            raise FlagCommandError(str(exc)) from None
        return orjson.dumps(flag.as_dict()).decode() if as_json else f"set {key} in {store.describe()}"
    if action == "delete":
        return f"deleted {key}" if store.delete(key) else f"{key} was not stored"
    if action == "get":
        stored = store.load().get(key)
        with FlagService(settings) as service:
            decision = service.decide(key, opts.get("distinct_id"), opts.get("workspace"))
        doc = {"stored": stored.as_dict() if stored else None, "decision": {"key": key, **decision.as_context()}}
        if as_json:
            return orjson.dumps(doc).decode()
        state = "on" if decision.enabled else "off"
        variant = f" variant={decision.variant}" if decision.variant else ""
        return f"{key}: {state}{variant} (source {decision.source})" + ("" if stored else " [not in the flag database]")
    raise FlagCommandError(f"unknown action {action!r}: list | get | set | delete | migrate")
