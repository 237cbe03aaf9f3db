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
   user per TTL - costly on a busy stream, hence opt-in).  A flag PostHog does
   not define is left to the next source.  When PostHog is unreachable the SDK
   keeps the last definitions it loaded, so PostHog still decides what it knew.
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

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from etl.config import CoreSettings
from mappers.flags.decision import FlagDecision, default_decision
from mappers.flags.posthog import PostHogFlags, posthog_configured
from mappers.flags.store import FlagStore, StoredFlag

log = logging.getLogger("etl.flags")

#: Cache entries kept at most; past it the cache starts over (bounded memory).
MAX_CACHED_DECISIONS = 200_000


@dataclass
class _Stats:
    hits: int = 0
    misses: int = 0
    remote_calls: int = 0
    by_source: dict[str, int] = field(default_factory=dict)


class FlagService:
    """``is_enabled`` / ``get_flag_variant`` / ``get_flags`` / ``set_flag`` for
    (distinct_id, workspace_id).
    """

    def __init__(
        self, settings: CoreSettings, *, use_posthog: bool = True, use_store: bool = True
    ) -> None:
        self.settings = settings
        self.flags = settings.flags
        self.ttl = settings.flags.cache_ttl
        self.posthog: PostHogFlags | None = (
            PostHogFlags(settings.posthog, settings.flags)
            if use_posthog and posthog_configured(settings)
            else None
        )
        self.store: FlagStore | None = (
            FlagStore.from_settings(settings.flags) if use_store else None
        )
        self._stored: dict[str, StoredFlag] = {}
        self._store_ok: bool | None = None
        self._cache: dict[tuple[str, str | None, str | None], tuple[float, FlagDecision]] = {}
        self._defs_seen: Any = None
        self._remote_deadline: float | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self.stats = _Stats()

    # ------------------------------------------------------------- lifecycle
    def start(self) -> FlagService:
        if self.posthog is not None:
            self.posthog.start(self.flags.startup_wait)
        if self.store is not None:
            self.refresh()
            self._refresher = threading.Thread(
                target=self._refresh_loop, name="flag-store-refresh", daemon=True
            )
            self._refresher.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=self.flags.db_timeout * 2 + 1)
        if self.posthog is not None:
            self.posthog.close()

    def __enter__(self) -> FlagService:
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
                log.warning(
                    "flag store %s unavailable (%s); using its last snapshot",
                    self.store.describe(),
                    type(exc).__name__,
                )
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
        """Allow at most ``budget`` seconds (default ``flags.remote_budget``)
        of remote /flags calls from now.
        """
        self._remote_deadline = time.monotonic() + (
            self.flags.remote_budget if budget is None else budget
        )

    def end_batch(self) -> None:
        self._remote_deadline = None

    def decide(
        self, key: str, distinct_id: str | None = None, workspace_id: str | None = None
    ) -> FlagDecision:
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

    def _evaluate(
        self, key: str, distinct_id: str | None, workspace_id: str | None
    ) -> tuple[FlagDecision, bool]:
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

    def is_enabled(
        self, key: str, *, distinct_id: str | None = None, workspace_id: str | None = None
    ) -> bool:
        return self.decide(key, distinct_id, workspace_id).enabled

    def get_flag_variant(
        self, key: str, *, distinct_id: str | None = None, workspace_id: str | None = None
    ) -> str | None:
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

    def get_flags(
        self, *, distinct_id: str | None = None, workspace_id: str | None = None
    ) -> dict[str, FlagDecision]:
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
            else {
                "local": self.posthog.local,
                "definitions_loaded": self.posthog.definitions is not None,
            },
            "store": None
            if self.store is None
            else {
                "store": self.store.describe(),
                "reachable": self._store_ok,
                "flags": len(self._stored),
            },
            "cache": {
                "entries": len(self._cache),
                "hits": self.stats.hits,
                "misses": self.stats.misses,
            },
        }
