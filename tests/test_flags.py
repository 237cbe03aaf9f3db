"""Flag service: the real posthog SDK against the local PostHog server, the
PostgreSQL and embedded SQLite flag stores, caching and fallbacks.

Expected buckets are recomputed here with hashlib, independently of the
service, the SDK and the fake server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest

from etl.config import FlagSettings, PostHogSettings
from mappers.flags import FlagService, FlagStore, StoredFlag, mask_url
from ops.harness.broker import free_port
from ops.inprocess import Record
from sinks.settings import Settings
from streams.stages import CHUNK_RECORDS, NormalizeStage
from tests.servers import PostHogServer

PROJECT_KEY = "phc_flagtest_project_key_0001"
PERSONAL_KEY = "phx_flagtest_personal_key_0001"
PG_PASSWORD = "pg-pass-never-logged"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(60)


def bucket(key: str, identifier: str, salt: str = "") -> float:
    digest = hashlib.sha1(f"{key}.{identifier}{salt}".encode()).hexdigest()
    return int(digest[:15], 16) / 0xFFFFFFFFFFFFFFF


def expected_variant(key: str, identifier: str, variants: list[tuple[str, int]]) -> str | None:
    point, low = bucket(key, identifier, "variant"), 0.0
    for name, pct in variants:
        if low <= point < low + pct / 100:
            return name
        low += pct / 100
    return None


GROUP_TYPES = {"0": "workspace"}
WORKSPACE_FLAG = {
    "id": 1,
    "key": "enable_guardrails_tracing",
    "active": True,
    "filters": {
        "aggregation_group_type_index": 0,
        "groups": [
            {
                "properties": [
                    {
                        "key": "$group_key",
                        "type": "group",
                        "value": ["ws_a"],
                        "operator": "exact",
                        "group_type_index": 0,
                    }
                ],
                "rollout_percentage": 100,
            }
        ],
    },
}
ROLLOUT_FLAG = {
    "id": 2,
    "key": "track_model_costs",
    "active": True,
    "filters": {"groups": [{"properties": [], "rollout_percentage": 30}]},
}
VARIANTS = [("v1", 25), ("v2", 25), ("v3", 50)]
MULTIVARIATE_FLAG = {
    "id": 3,
    "key": "versioned_rag_tracking",
    "active": True,
    "filters": {
        "groups": [{"properties": [], "rollout_percentage": 100}],
        "multivariate": {"variants": [{"key": k, "rollout_percentage": p} for k, p in VARIANTS]},
    },
}
# Experience continuity cannot be evaluated locally: the SDK's /flags is asked.
STICKY_FLAG = {
    "id": 4,
    "key": "agent_debugger_ui",
    "active": True,
    "ensure_experience_continuity": True,
    "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]},
}
ALL_FLAGS = [WORKSPACE_FLAG, ROLLOUT_FLAG, MULTIVARIATE_FLAG, STICKY_FLAG]
USERS = [f"user_{i}" for i in range(120)]


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_url() -> str:
    """A database of its own on the local PostgreSQL, dropped afterwards."""
    name = f"etl_flags_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> FlagSettings:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        # Each test gets an empty table.
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(
                "DROP TABLE IF EXISTS feature_flags; DROP TABLE IF EXISTS schema_migrations"
            )
        return FlagSettings(database_url=url, cache_ttl=1.0)
    return FlagSettings(embedded_path=tmp_path / "flags.sqlite3", cache_ttl=1.0)


@pytest.fixture
def ph() -> PostHogServer:
    with PostHogServer(PROJECT_KEY, PERSONAL_KEY) as server:
        server.set_flags(ALL_FLAGS, group_type_mapping=GROUP_TYPES)
        yield server
    assert server.errors == []


def settings_for(ph_url: str | None, flags: FlagSettings, *, personal: bool = True) -> Settings:
    posthog = (
        PostHogSettings(
            api_key=PROJECT_KEY, host=ph_url, personal_api_key=PERSONAL_KEY if personal else None
        )
        if ph_url
        else PostHogSettings()
    )
    return Settings(posthog=posthog, flags=flags)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def wait_until(predicate, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - started


# -- PostHog first -----------------------------------------------------------------------


def test_posthog_workspace_flag_on_for_one_workspace_off_for_another(
    ph: PostHogServer, tmp_path: Path
) -> None:
    flags = FlagSettings(embedded_path=tmp_path / "none.sqlite3")
    with FlagService(settings_for(ph.url, flags)) as service:
        on = service.decide("enable_guardrails_tracing", "user_1", "ws_a")
        off = service.decide("enable_guardrails_tracing", "user_1", "ws_b")
        assert (on.enabled, on.variant, on.source) == (True, None, "posthog")
        assert (off.enabled, off.variant, off.source) == (False, None, "posthog")
        assert (
            service.is_enabled(
                "enable_guardrails_tracing", distinct_id="user_2", workspace_id="ws_a"
            )
            is True
        )
        # A workspace flag for an event without a workspace: PostHog says off.
        assert service.decide("enable_guardrails_tracing", "user_3", None).as_context() == {
            "enabled": False,
            "variant": None,
            "source": "posthog",
        }
        # A flag PostHog does not define goes to the next source: the default.
        assert service.decide("not_in_posthog", "user_1", "ws_a").as_context() == {
            "enabled": True,
            "variant": None,
            "source": "default",
        }
    # Decided locally from one definitions fetch: no /flags call at all.
    assert [r.path for r in ph.requests] == ["/flags/definitions"]
    assert ph.requests[0].header("authorization") == f"Bearer {PERSONAL_KEY}"


def test_rollout_buckets_like_posthog_in_posthog_and_both_stores(
    ph: PostHogServer, store_settings: FlagSettings
) -> None:
    expected = {u: bucket("track_model_costs", u) <= 0.30 for u in USERS}
    assert 20 < sum(expected.values()) < 60  # both sides are exercised

    with FlagService(
        settings_for(ph.url, FlagSettings(embedded_path=store_settings.embedded_path))
    ) as via_posthog:
        from_posthog = {u: via_posthog.decide("track_model_costs", u, "ws_a") for u in USERS}
    assert {u: d.enabled for u, d in from_posthog.items()} == expected
    assert {d.source for d in from_posthog.values()} == {"posthog"}
    assert {u: ph.evaluate_flag("track_model_costs", u).enabled for u in USERS} == expected

    with FlagService(settings_for(None, store_settings)) as via_db:
        via_db.set_flag("track_model_costs", rollout_percentage=30)
        from_db = {u: via_db.decide("track_model_costs", u, "ws_a") for u in USERS}
    assert {u: d.enabled for u, d in from_db.items()} == expected
    assert {d.source for d in from_db.values()} == {"db"}


def test_multivariate_variant_from_posthog_and_store(
    ph: PostHogServer, store_settings: FlagSettings
) -> None:
    expected = {u: expected_variant("versioned_rag_tracking", u, VARIANTS) for u in USERS}
    assert set(expected.values()) == {"v1", "v2", "v3"}

    with FlagService(
        settings_for(ph.url, FlagSettings(embedded_path=store_settings.embedded_path))
    ) as service:
        got = {u: service.get_flag_variant("versioned_rag_tracking", distinct_id=u) for u in USERS}
        assert service.decide("versioned_rag_tracking", USERS[0], None).source == "posthog"
    assert got == expected

    with FlagService(settings_for(None, store_settings)) as service:
        service.set_flag(
            "versioned_rag_tracking",
            variants=[{"key": k, "rollout_percentage": p} for k, p in VARIANTS],
            target_workspaces=["ws_a"],
        )
        got = {
            u: service.get_flag_variant(
                "versioned_rag_tracking", distinct_id=u, workspace_id="ws_a"
            )
            for u in USERS
        }
        # Not targeted: off, so no variant.
        assert (
            service.get_flag_variant(
                "versioned_rag_tracking", distinct_id=USERS[0], workspace_id="ws_b"
            )
            is None
        )
        assert service.decide("versioned_rag_tracking", USERS[0], "ws_b").as_context() == {
            "enabled": False,
            "variant": None,
            "source": "db",
        }
    assert got == expected


def test_remote_flags_when_local_evaluation_cannot_decide(
    ph: PostHogServer, tmp_path: Path
) -> None:
    flags = FlagSettings(embedded_path=tmp_path / "none.sqlite3")
    with FlagService(settings_for(ph.url, flags)) as service:
        first = service.decide("agent_debugger_ui", "user_7", "ws_a")
        again = service.decide("agent_debugger_ui", "user_7", "ws_a")  # cached
    assert (first.enabled, first.source) == (True, "posthog")
    assert again is first
    calls = ph.requests_to("/flags")
    assert [(r.path, r.query, r.status) for r in calls] == [("/flags/", {"v": "4"}, 200)]
    assert calls[0].json["distinct_id"] == "user_7"
    assert calls[0].json["groups"] == {"workspace": "ws_a"}
    assert calls[0].json["flag_keys_to_evaluate"] == ["agent_debugger_ui"]


def test_without_personal_key_posthog_is_asked_only_in_remote_mode(
    ph: PostHogServer, tmp_path: Path
) -> None:
    local = settings_for(
        ph.url, FlagSettings(embedded_path=tmp_path / "none.sqlite3"), personal=False
    )
    with FlagService(local) as service:
        assert service.posthog is None  # no per-user /flags calls unless asked for
        assert service.decide("enable_guardrails_tracing", "user_1", "ws_b").source == "default"
    remote = settings_for(
        ph.url,
        FlagSettings(embedded_path=tmp_path / "none.sqlite3", posthog_mode="remote"),
        personal=False,
    )
    with FlagService(remote) as service:
        decisions = {
            ws: service.decide("enable_guardrails_tracing", "user_1", ws).as_context()
            for ws in ("ws_a", "ws_b")
        }
        unknown = service.decide("not_in_posthog", "user_1", "ws_a")
    assert decisions == {
        "ws_a": {"enabled": True, "variant": None, "source": "posthog"},
        "ws_b": {"enabled": False, "variant": None, "source": "posthog"},
    }
    assert unknown.source == "default"
    assert [r.path for r in ph.requests] == ["/flags/"] * 3  # never the definitions endpoint


def test_get_flags_lists_every_source(ph: PostHogServer, tmp_path: Path) -> None:
    flags = FlagSettings(embedded_path=tmp_path / "f.sqlite3")
    with FlagService(settings_for(ph.url, flags)) as service:
        service.set_flag("db_only_flag", enabled=False)
        decisions = service.get_flags(distinct_id="user_1", workspace_id="ws_b")
    assert {
        k: (d.enabled, d.source) for k, d in decisions.items() if k != "versioned_rag_tracking"
    } == {
        "agent_debugger_ui": (True, "posthog"),
        "db_only_flag": (False, "db"),
        "enable_guardrails_tracing": (False, "posthog"),
        "track_model_costs": (bucket("track_model_costs", "user_1") <= 0.3, "posthog"),
    }
    assert decisions["versioned_rag_tracking"].variant == expected_variant(
        "versioned_rag_tracking", "user_1", VARIANTS
    )


# -- fallbacks ---------------------------------------------------------------------------


def test_posthog_down_the_database_decides(store_settings: FlagSettings) -> None:
    with FlagService(settings_for(dead_url(), store_settings)) as service:
        service.set_flag("enable_guardrails_tracing", target_workspaces=["ws_a"])
        started = time.monotonic()
        on = service.decide("enable_guardrails_tracing", "user_1", "ws_a")
        off = service.decide("enable_guardrails_tracing", "user_1", "ws_b")
        elapsed = time.monotonic() - started
        assert (
            service.posthog is not None and service.posthog.remote_blocked_until > time.monotonic()
        )
    assert on.as_context() == {"enabled": True, "variant": None, "source": "db"}
    assert off.as_context() == {"enabled": False, "variant": None, "source": "db"}
    assert elapsed < 2  # a refused connection fails fast and then backs off


def test_posthog_goes_down_last_definitions_still_decide(ph: PostHogServer, tmp_path: Path) -> None:
    flags = FlagSettings(embedded_path=tmp_path / "none.sqlite3", cache_ttl=0.5)
    with FlagService(settings_for(ph.url, flags)) as service:
        assert service.decide("enable_guardrails_tracing", "u", "ws_a").source == "posthog"
        ph.fail_for(60, status=503)
        time.sleep(0.8)  # past the TTL: the SDK polled and failed meanwhile
        assert any(r.status == 503 for r in ph.requests_to("/flags/definitions"))
        decision = service.decide("enable_guardrails_tracing", "u", "ws_b")
    assert decision.as_context() == {"enabled": False, "variant": None, "source": "posthog"}


def test_both_down_the_default_decides(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    down_db = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{free_port()}/flags"
    flags = FlagSettings(database_url=down_db, cache_ttl=1.0, db_timeout=1.0)
    started = time.monotonic()
    with FlagService(settings_for(dead_url(), flags)) as service:
        decisions = [
            service.decide(k, "user_1", "ws_a")
            for k in ("enable_guardrails_tracing", "track_model_costs")
        ]
        assert service.is_enabled("versioned_rag_tracking", distinct_id="u9") is True
    assert [d.as_context() for d in decisions] == [
        {"enabled": True, "variant": None, "source": "default"}
    ] * 2
    assert time.monotonic() - started < 10
    # The store's URL is logged masked; no key or password reaches the logs.
    assert mask_url(down_db) in caplog.text
    for secret in (PG_PASSWORD, PERSONAL_KEY):
        assert secret not in caplog.text


def test_no_source_configured_every_gate_is_open(tmp_path: Path) -> None:
    store = tmp_path / "never-created.sqlite3"
    with FlagService(settings_for(None, FlagSettings(embedded_path=store))) as service:
        assert service.posthog is None
        assert service.decide("enable_guardrails_tracing", "u", "ws").as_context() == {
            "enabled": True,
            "variant": None,
            "source": "default",
        }
        assert service.get_flag_variant("versioned_rag_tracking", distinct_id="u") is None
    assert not store.exists()  # reading never creates the store


# -- changes at run time -------------------------------------------------------------------


def test_posthog_change_takes_effect_within_ttl(ph: PostHogServer, tmp_path: Path) -> None:
    flags = FlagSettings(embedded_path=tmp_path / "none.sqlite3", cache_ttl=1.0)
    with FlagService(settings_for(ph.url, flags)) as service:
        assert (
            service.is_enabled("enable_guardrails_tracing", distinct_id="u", workspace_id="ws_b")
            is False
        )
        turned_on = json.loads(json.dumps(WORKSPACE_FLAG))
        turned_on["filters"]["groups"][0]["properties"][0]["value"] = ["ws_a", "ws_b"]
        ph.set_flags([turned_on, ROLLOUT_FLAG, MULTIVARIATE_FLAG, STICKY_FLAG])
        took = wait_until(
            lambda: service.is_enabled(
                "enable_guardrails_tracing", distinct_id="u", workspace_id="ws_b"
            ),
            3,
        )
    assert took <= 1.0 + 0.5  # within the TTL (plus scheduling slack on a loaded machine)


def test_database_change_by_another_writer_takes_effect_within_ttl(
    store_settings: FlagSettings,
) -> None:
    writer = FlagStore.from_settings(store_settings)
    writer.upsert(StoredFlag("enable_guardrails_tracing", target_workspaces=("ws_a",)))
    with FlagService(settings_for(None, store_settings)) as service:
        assert (
            service.decide("enable_guardrails_tracing", "u", "ws_b").as_context()["enabled"]
            is False
        )
        # Another process (e.g. `etl flags set`) changes the row.
        writer.upsert(StoredFlag("enable_guardrails_tracing", target_workspaces=("ws_a", "ws_b")))
        took = wait_until(
            lambda: service.is_enabled(
                "enable_guardrails_tracing", distinct_id="u", workspace_id="ws_b"
            ),
            3,
        )
        writer.upsert(StoredFlag("enable_guardrails_tracing", enabled=False))
        took_off = wait_until(
            lambda: (
                not service.is_enabled(
                    "enable_guardrails_tracing", distinct_id="u", workspace_id="ws_a"
                )
            ),
            3,
        )
    assert took <= 1.0 + 0.5 and took_off <= 1.0 + 0.5


def test_database_down_keeps_the_last_snapshot(pg_url: str) -> None:
    flags = FlagSettings(database_url=pg_url, cache_ttl=0.5)
    with FlagService(settings_for(None, flags)) as service:
        service.set_flag("track_model_costs", target_workspaces=["ws_a"])
        assert service.decide("track_model_costs", "u", "ws_b").source == "db"
        service.store.database_url = (
            f"postgresql://postgres@127.0.0.1:{free_port()}/gone"  # the database vanishes
        )
        assert service.refresh() is False
        time.sleep(0.6)
        assert service.decide("track_model_costs", "u", "ws_b").as_context() == {
            "enabled": False,
            "variant": None,
            "source": "db",
        }


# -- the store -----------------------------------------------------------------------------


def test_migrations_are_versioned_and_idempotent(store_settings: FlagSettings) -> None:
    store = FlagStore.from_settings(store_settings)
    assert store.load() == {}  # not created yet: no flags
    assert store.migrate() == [1]
    assert store.migrate() == []
    assert [(v, n) for v, n, _ in store.migrations()] == [(1, "create feature_flags")]
    flag = store.upsert(
        StoredFlag(
            "versioned_rag_tracking",
            rollout_percentage=50,
            variants=(
                {"key": "a", "rollout_percentage": 40, "payload": {"x": 1}},
                {"key": "b", "rollout_percentage": 60},
            ),
            target_users=("u1",),
            bucket_by="workspace",
            description="RAG v2",
        )
    )
    assert store.load() == {"versioned_rag_tracking": flag}
    assert store.delete("versioned_rag_tracking") is True
    assert store.load() == {}
    with pytest.raises(ValueError, match="sum to 100"):
        StoredFlag("bad", variants=({"key": "a", "rollout_percentage": 50},))
    with pytest.raises(ValueError, match="0..100"):
        StoredFlag("bad", rollout_percentage=101)


def test_etl_flags_cli_set_get_list(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "POSTHOG_"))}
    env["ETL_FLAGS__EMBEDDED_PATH"] = str(tmp_path / "cli.sqlite3")

    def etl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "flags", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = etl(
        "set",
        "versioned_rag_tracking",
        "--variants",
        "v1:25,v2:25,v3:50",
        "--workspaces",
        "ws_a",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["variants"] == [
        {"key": k, "rollout_percentage": float(p)} for k, p in VARIANTS
    ]
    got = etl(
        "get", "versioned_rag_tracking", "--distinct-id", "user_5", "--workspace", "ws_a", "--json"
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout.strip().splitlines()[-1])["decision"] == {
        "key": "versioned_rag_tracking",
        "enabled": True,
        "variant": expected_variant("versioned_rag_tracking", "user_5", VARIANTS),
        "source": "db",
    }
    bad = etl("set", "x", "--variants", "a:10")
    assert bad.returncode == 2 and "sum to 100" in bad.stderr


def test_gating_policy_and_redaction_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from etl.config import ConfigError
    from mappers.governance import flags_by_event
    from sinks.settings import load_settings

    default = load_settings()
    assert default.flags.gates["posthog"] == {
        "$ai_generation": "track_model_costs",
        "prompt_blocked": "enable_guardrails_tracing",
        "rag_query_triggered": "versioned_rag_tracking",
    }
    assert (
        default.flags.gates["rudderstack"] == default.flags.gates["posthog"]
        and "duckdb" not in default.flags.gates
    )
    assert flags_by_event(default) == {}  # only the warehouse is enabled: nothing to decide

    monkeypatch.setenv("ETL_SINKS", "duckdb,posthog")
    monkeypatch.setenv("POSTHOG_API_KEY", PROJECT_KEY)
    monkeypatch.setenv(
        "ETL_FLAGS__GATES",
        '{"posthog": {"prompt_blocked": "enable_guardrails_tracing"}, '
        '"duckdb": {"tool_used": "warehouse_tools"}}',
    )
    monkeypatch.setenv("ETL_REDACTION__PATHS", "user_note,context.page.search")
    monkeypatch.setenv("ETL_REDACTION__HMAC_SECRET", "from-env")
    settings = load_settings()
    assert flags_by_event(settings) == {
        "prompt_blocked": ("enable_guardrails_tracing",),
        "tool_used": ("warehouse_tools",),
    }
    assert settings.redaction.paths == ["user_note", "context.page.search"]
    assert settings.redaction.hmac_secret.get_secret_value() == "from-env"

    monkeypatch.setenv("ETL_FLAGS__GATES", '{"mixpanel": {"x": "y"}}')
    with pytest.raises(
        ConfigError, match=r"flags: gates: unknown sink 'mixpanel'.*ETL_FLAGS__GATES"
    ):
        load_settings()


def test_slow_remote_flags_are_bounded_per_batch(ph: PostHogServer, tmp_path: Path) -> None:
    ph.faults.push(delay=0.3, path="/flags", times=None)  # answers normally, slowly
    flags = FlagSettings(embedded_path=tmp_path / "none.sqlite3", remote_budget=0.5)
    with FlagService(settings_for(ph.url, flags)) as service:
        service.begin_batch()
        started = time.monotonic()
        decisions = [service.decide("agent_debugger_ui", f"user_{i}", "ws_a") for i in range(20)]
        elapsed = time.monotonic() - started
        service.end_batch()
        later = service.decide("agent_debugger_ui", "user_19", "ws_a")
    remote = [d for d in decisions if d.source == "posthog"]
    assert 1 <= len(remote) <= 3 and elapsed < 1.5  # the batch spent about its budget, no more
    assert {d.source for d in decisions[len(remote) :]} == {"default"}
    assert later.source == "posthog"  # out-of-budget fallbacks were not cached
    assert len(ph.requests_to("/flags")) == len(remote) + 1


def test_the_normalize_stage_spends_one_remote_budget_per_batch_however_it_is_chunked(
    ph: PostHogServer, tmp_path: Path
) -> None:
    # The stage works a batch through in chunks (streams.stages.CHUNK_RECORDS);
    # the budget is the batch's, so four chunks must not buy four budgets.
    ph.faults.push(delay=0.3, path="/flags", times=None)
    flags = FlagSettings(
        embedded_path=tmp_path / "none.sqlite3",
        remote_budget=0.5,
        gates={"posthog": {"tool_used": "agent_debugger_ui"}},
    )
    settings = settings_for(ph.url, flags).model_copy(update={"sinks": ["duckdb", "posthog"]})
    records = [
        Record(
            "raw",
            0,
            i,
            1_790_000_000_000,
            json.dumps({"event": "tool_used", "distinct_id": f"user_{i}"}).encode(),
        )
        for i in range(3 * CHUNK_RECORDS + 1)
    ]
    stage = NormalizeStage(settings).start()
    try:
        started = time.monotonic()
        batch = stage.process(records)
        elapsed = time.monotonic() - started
    finally:
        stage.close()
    sources = [
        orjson.loads(raw)["context"]["flags"]["agent_debugger_ui"]["source"]
        for raw in batch.encoded
    ]
    assert len(sources) == len(records)
    assert 1 <= sources.count("posthog") <= 3 and elapsed < 1.5
    assert set(sources) == {"posthog", "default"}
