"""The same raw events through the real broker and workers into DuckDB, Snowflake
(fakesnow) and BigQuery (bqemulator): every analyst view returns the same, exact
numbers in all three warehouses.

Also home of the known data set and the warehouse helpers the per-warehouse tests share.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from sinks.bigquery import BigQuerySettings
from sinks.snowflake import SnowflakeSettings
from tests.conftest import warehouse_rows
from tests.emulators.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
    SNOWFLAKE_TEST_DATABASE,
    bigquery_client,
    bigquery_dataset,
    bigquery_emulator,
    snowflake_conn_kwargs,
    snowflake_emulator,
)

DAY1, DAY2 = "2026-11-19", "2026-11-20"


def _ph(
    event: str, uid: str, ts: str, props: dict[str, Any], distinct_id: str = "user_1"
) -> dict[str, Any]:
    return {
        "event": event,
        "distinct_id": distinct_id,
        "uuid": uid,
        "timestamp": ts,
        "properties": props,
    }


def known_events() -> list[dict[str, Any]]:
    """A small data set whose view results are worked out by hand below."""
    ev = []
    for i, (day, hour, model, provider, ws, tin, tout, cost) in enumerate(
        [
            (DAY1, 8, "gpt-4o", "openai", "ws_a", 1000, 200, 0.25),
            (DAY1, 9, "gpt-4o", "openai", "ws_a", 500, 100, 0.125),
            (DAY1, 10, "claude-sonnet", "anthropic", "ws_b", 2000, 400, 1.0),
            (DAY2, 10, "gpt-4o", "openai", "ws_a", 100, 50, 0.5),
        ]
    ):
        ev.append(
            _ph(
                "$ai_generation",
                f"ai-{i}",
                f"{day}T{hour:02d}:00:00Z",
                {
                    "$ai_model": model,
                    "$ai_provider": provider,
                    "$ai_input_tokens": tin,
                    "$ai_output_tokens": tout,
                    "$ai_total_cost_usd": cost,
                    "$groups": {"workspace": ws},
                },
            )
        )
    for i, (day, ws, time_ms, success) in enumerate(
        [
            (DAY1, "ws_a", 100, True),
            (DAY1, "ws_a", 200, True),
            (DAY1, "ws_b", 300, False),
            (DAY1, "ws_b", 400, None),
            (DAY2, "ws_a", 50, True),
        ]
    ):
        props = {
            "flow_id": f"f-{i}",
            "tools_used": ["http", "sql"],
            "time_ms": time_ms,
            "workspace_id": ws,
        }
        if success is not None:
            props["success"] = success
        ev.append(_ph("flow_executed", f"flow-{i}", f"{day}T0{i + 1}:00:00Z", props))
    for i, (tool_type, latency, status) in enumerate(
        [
            ("http", 10, "success"),
            ("http", 20, "ok"),
            ("http", 30, "error"),
            ("http", 40, None),
            ("sql", 5, "success"),
        ]
    ):
        props = {
            "tool_id": f"t-{i}",
            "tool_type": tool_type,
            "latency_ms": latency,
            "workspace_id": "ws_a",
        }
        if status:
            props["status"] = status
        ev.append(_ph("tool_used", f"tool-{i}", f"{DAY1}T12:0{i}:00Z", props))
    for i, (db, latency, sources) in enumerate(
        [("qdrant", 10, 2), ("qdrant", 30, 4), ("pinecone", 7, 1)]
    ):
        ev.append(
            _ph(
                "rag_query_triggered",
                f"rag-{i}",
                f"{DAY1}T13:0{i}:00Z",
                {
                    "vector_db_used": db,
                    "index_name": "docs",
                    "latency_ms": latency,
                    "sources_found": sources,
                    "workspace_id": "ws_b",
                },
            )
        )
    for i, (ws, score) in enumerate([("ws_a", 0.9), ("ws_b", 0.8), ("ws_b", 0.95)]):
        ev.append(
            _ph(
                "prompt_blocked",
                f"blocked-{i}",
                f"{DAY1}T14:0{i}:00Z",
                {"match_score": score, "source": "guard", "workspace_id": ws},
            )
        )
    return ev


KNOWN_RAW = [orjson.dumps(e) for e in known_events()]
BAD_RAW = {
    b"not json at all": "invalid_json",
    b'{"event": "tool_used", "distinct_id": "u", "properties": {"latency_ms": "fast"}}': (
        "invalid_property"
    ),
}

# Worked out by hand from known_events(); percentiles are linear interpolation (PERCENTILE_CONT).
EXPECTED_VIEWS: dict[str, list[tuple[Any, ...]]] = {
    "llm_cost_daily": [
        (date(2026, 11, 19), "claude-sonnet", "anthropic", "ws_b", 1, 2000, 400, 1.0),
        (date(2026, 11, 19), "gpt-4o", "openai", "ws_a", 2, 1500, 300, 0.375),
        (date(2026, 11, 20), "gpt-4o", "openai", "ws_a", 1, 100, 50, 0.5),
    ],
    # day, workspace, flows, succeeded, with_outcome, success_rate, p50, p95, p99
    "flow_success_daily": [
        (date(2026, 11, 19), "ws_a", 2, 2, 2, 1.0, 150.0, 195.0, 199.0),
        (date(2026, 11, 19), "ws_b", 2, 0, 1, 0.0, 350.0, 395.0, 399.0),
        (date(2026, 11, 20), "ws_a", 1, 1, 1, 1.0, 50.0, 50.0, 50.0),
    ],
    "tool_latency": [
        (date(2026, 11, 19), "ws_a", "http", 4, 25.0, 38.5, 39.7, 0.25),
        (date(2026, 11, 19), "ws_a", "sql", 1, 5.0, 5.0, 5.0, 0.0),
    ],
    "rag_latency": [
        (date(2026, 11, 19), "ws_b", "pinecone", 1, 7.0, 7.0, 7.0, 1.0),
        (date(2026, 11, 19), "ws_b", "qdrant", 2, 20.0, 29.0, 29.8, 3.0),
    ],
    # 1 blocked of 3 prompt_blocked/flow_executed is 0.3333 (rates have 4 decimals).
    "blocked_prompt_rate": [
        (date(2026, 11, 19), "ws_a", 1, 2, 10, 0.3333),
        (date(2026, 11, 19), "ws_b", 2, 2, 8, 0.5),
        (date(2026, 11, 20), "ws_a", 0, 1, 2, 0.0),
    ],
}
VIEW_ORDER = {
    "llm_cost_daily": "1, 2",
    "flow_success_daily": "1, 2",
    "tool_latency": "1, 2, 3",
    "rag_latency": "1, 2, 3",
    "blocked_prompt_rate": "1, 2",
}
LAYOUT_COUNTS = {"tracks": 20, "identifies": 4, "pages": 0, "screens": 0, "groups": 0}


# ------------------------------------------------------------------ identity
def _seg(kind: str, mid: str, ts: str, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, "messageId": mid, "timestamp": ts, **fields})


IDENTITY_RAW = [
    # u1: anonymous a1 signs up, changes plan later; an older call arrives last.
    _seg(
        "identify",
        "id-2",
        "2026-11-19T10:00:00+02:00",  # 08:00 UTC
        userId="u1",
        anonymousId="a1",
        traits={"plan": "pro", "email": "u1@example.com"},
        context={"groupId": "ws_a"},
    ),
    _seg("identify", "id-3", "2026-11-20T09:00:00Z", userId="u1", traits={"plan": "team"}),
    _seg(
        "identify",
        "id-1",
        "2026-11-18T09:00:00Z",
        userId="u1",
        anonymousId="a0",
        traits={"plan": "free", "name": "Ada", "email": "old@example.com"},
    ),
    _seg("alias", "al-1", "2026-11-19T12:00:00Z", userId="u1", previousId="legacy-7"),
    # u2 via PostHog's $identify / $create_alias.
    orjson.dumps(
        {
            "event": "$identify",
            "distinct_id": "u2",
            "uuid": "0192f8a0-0000-7000-8000-0000000000a1",
            "timestamp": "2026-11-19T07:00:00Z",
            "properties": {
                "$anon_distinct_id": "a2",
                "$set": {"plan": "free"},
                "workspace_id": "ws_b",
            },
        }
    ),
    orjson.dumps(
        {
            "event": "$create_alias",
            "distinct_id": "u2",
            "uuid": "0192f8a0-0000-7000-8000-0000000000a2",
            "timestamp": "2026-11-19T07:30:00Z",
            "properties": {"alias": "u2-old"},
        }
    ),
    # a1 is later linked to u3 by a newer alias call: the latest link wins.
    _seg("alias", "al-2", "2026-11-21T00:00:00Z", userId="u3", previousId="a1"),
]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


EXPECTED_USERS = [
    (
        "u1",
        {"email": "u1@example.com", "name": "Ada", "plan": "team"},
        None,  # the latest call (id-3) named no workspace
        utc(2026, 11, 18, 9),
        utc(2026, 11, 20, 9),
        "id-3",
    ),
    (
        "u2",
        {"plan": "free"},
        "ws_b",
        utc(2026, 11, 19, 7),
        utc(2026, 11, 19, 7),
        "0192f8a0-0000-7000-8000-0000000000a1",
    ),
]
EXPECTED_ALIASES = [
    ("a0", "u1", "identify", "id-1", utc(2026, 11, 18, 9)),
    ("a1", "u3", "alias", "al-2", utc(2026, 11, 21)),
    ("a2", "u2", "identify", "0192f8a0-0000-7000-8000-0000000000a1", utc(2026, 11, 19, 7)),
    ("legacy-7", "u1", "alias", "al-1", utc(2026, 11, 19, 12)),
    ("u2-old", "u2", "alias", "0192f8a0-0000-7000-8000-0000000000a2", utc(2026, 11, 19, 7, 30)),
]
USERS_SQL = (
    "SELECT user_id, traits, workspace_id, first_identified_at, last_identified_at, "
    "last_message_id FROM {} ORDER BY user_id"
)
ALIASES_SQL = "SELECT previous_id, user_id, source, message_id, timestamp FROM {} ORDER BY 1"


def _aware(value: Any) -> Any:
    if isinstance(value, datetime):
        assert value.tzinfo is not None, f"naive timestamp {value!r}: time must be zoned"
        return value.astimezone(UTC)
    if isinstance(value, str) and value.startswith("{"):
        return orjson.loads(value)
    return value


def zoned_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(_aware(v) for v in row) for row in rows]


def norm(value: Any) -> Any:
    """Driver types -> comparable Python values (Decimal, float noise, tz-aware UTC)."""
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def norm_rows(rows: Any) -> list[tuple[Any, ...]]:
    return [tuple(norm(v) for v in row) for row in rows]


# Tests load at once; production defaults load about once a minute (test_load_policy.py).
FAST_LOADS: dict[str, Any] = {"flush_max_seconds": 0.5, "min_load_interval": 0.0}


def fast_loads_env(section: str) -> dict[str, str]:
    return {f"ETL_{section}__{k.upper()}": str(v) for k, v in FAST_LOADS.items()}


# ------------------------------------------------------------------ Snowflake
def snowflake_target(kwargs: dict[str, Any]) -> tuple[SnowflakeSettings, dict[str, str], str]:
    """Settings + worker env for a fresh schema on the fakesnow server."""
    schema = f"S_{uuid.uuid4().hex[:10].upper()}"
    settings = SnowflakeSettings(
        account=kwargs["account"],
        user=kwargs["user"],
        password=kwargs["password"],
        database=SNOWFLAKE_TEST_DATABASE,
        schema=schema,
        host=kwargs["host"],
        port=kwargs["port"],
        protocol=kwargs["protocol"],
        **FAST_LOADS,
    )
    env = {
        "SNOWFLAKE_ACCOUNT": kwargs["account"],
        "SNOWFLAKE_USER": kwargs["user"],
        "SNOWFLAKE_PASSWORD": kwargs["password"],
        "SNOWFLAKE_DATABASE": SNOWFLAKE_TEST_DATABASE,
        "SNOWFLAKE_SCHEMA": schema,
        "ETL_SNOWFLAKE__HOST": kwargs["host"],
        "ETL_SNOWFLAKE__PORT": str(kwargs["port"]),
        "ETL_SNOWFLAKE__PROTOCOL": kwargs["protocol"],
        **fast_loads_env("SNOWFLAKE"),
    }
    return settings, env, schema


def snowflake_rows(
    emulator: Any, schema: str, sql: str, params: Any = None
) -> list[tuple[Any, ...]]:
    conn = emulator.connect(database=SNOWFLAKE_TEST_DATABASE, schema=schema)
    try:
        return list(conn.cursor().execute(sql, params).fetchall())
    finally:
        conn.close()


# ------------------------------------------------------------------- BigQuery
def bigquery_target(emulator: Any, dataset_id: str) -> tuple[BigQuerySettings, dict[str, str]]:
    project, dataset = dataset_id.split(".")
    settings = BigQuerySettings(
        project=project, dataset=dataset, api_endpoint=emulator.endpoint, **FAST_LOADS
    )
    env = {
        "GOOGLE_CLOUD_PROJECT": project,
        "BIGQUERY_DATASET": dataset,
        "ETL_BIGQUERY__API_ENDPOINT": emulator.endpoint,
        **fast_loads_env("BIGQUERY"),
    }
    return settings, env


def bigquery_rows(client: Any, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    from google.cloud import bigquery

    config = bigquery.QueryJobConfig(query_parameters=params or [])
    return [tuple(row.values()) for row in client.query(sql, job_config=config).result(timeout=60)]


# ----------------------------------------------------------------------- test
@pytest.mark.slow
def test_same_input_same_views_in_duckdb_snowflake_and_bigquery(
    make_pipeline,
    snowflake_emulator,  # noqa: F811
    snowflake_conn_kwargs,  # noqa: F811
    bigquery_emulator,  # noqa: F811
    bigquery_client,  # noqa: F811
    bigquery_dataset,  # noqa: F811
) -> None:
    sf_settings, sf_env, schema = snowflake_target(snowflake_conn_kwargs)
    bq_settings, bq_env = bigquery_target(bigquery_emulator, bigquery_dataset)
    pipeline = make_pipeline(
        sinks=("duckdb", "snowflake", "bigquery"),
        snowflake=sf_settings,
        bigquery=bq_settings,
        extra_env={**sf_env, **bq_env},
    )
    pipeline.produce(KNOWN_RAW + IDENTITY_RAW + list(BAD_RAW))
    pipeline.start()
    pipeline.wait_drained(timeout=120)
    pipeline.check_alive()
    duck = pipeline.settings.duckdb.path

    # The analyst's question from the issue, asked the same way in each warehouse.
    question = (
        "SELECT day, model, SUM(cost_usd) AS cost FROM {} GROUP BY day, model ORDER BY day, model"
    )
    answers = {
        "duckdb": norm_rows(warehouse_rows(duck, question.format("llm_cost_daily"))),
        "snowflake": norm_rows(
            snowflake_rows(snowflake_emulator, schema, question.format("llm_cost_daily"))
        ),
        "bigquery": norm_rows(
            bigquery_rows(bigquery_client, question.format(f"`{bigquery_dataset}.llm_cost_daily`"))
        ),
    }
    expected = [
        (date(2026, 11, 19), "claude-sonnet", 1.0),
        (date(2026, 11, 19), "gpt-4o", 0.375),
        (date(2026, 11, 20), "gpt-4o", 0.5),
    ]
    assert answers == {"duckdb": expected, "snowflake": expected, "bigquery": expected}

    for view, rows in EXPECTED_VIEWS.items():
        order = VIEW_ORDER[view]
        got = {
            "duckdb": norm_rows(warehouse_rows(duck, f"SELECT * FROM {view} ORDER BY {order}")),
            "snowflake": norm_rows(
                snowflake_rows(snowflake_emulator, schema, f"SELECT * FROM {view} ORDER BY {order}")
            ),
            "bigquery": norm_rows(
                bigquery_rows(
                    bigquery_client, f"SELECT * FROM `{bigquery_dataset}.{view}` ORDER BY {order}"
                )
            ),
        }
        assert got == {"duckdb": rows, "snowflake": rows, "bigquery": rows}, view

    # Per person: users and aliases, whatever order the partitions delivered the calls in.
    def bq_users(sql: str) -> str:
        return sql.replace("traits,", "TO_JSON_STRING(traits),")

    for table, sql, expected_rows in (
        ("users", USERS_SQL, EXPECTED_USERS),
        ("aliases", ALIASES_SQL, EXPECTED_ALIASES),
    ):
        got = {
            "duckdb": zoned_rows(warehouse_rows(duck, sql.format(table))),
            "snowflake": zoned_rows(snowflake_rows(snowflake_emulator, schema, sql.format(table))),
            "bigquery": zoned_rows(
                bigquery_rows(
                    bigquery_client, bq_users(sql).format(f"`{bigquery_dataset}.{table}`")
                )
            ),
        }
        assert got == {
            "duckdb": expected_rows,
            "snowflake": expected_rows,
            "bigquery": expected_rows,
        }
    # The familiar layout, and this week's question per workspace.
    for view, n in LAYOUT_COUNTS.items():
        sql = "SELECT COUNT(*), COUNT(DISTINCT id) FROM {}"
        got = {
            "duckdb": warehouse_rows(duck, sql.format(view)),
            "snowflake": snowflake_rows(snowflake_emulator, schema, sql.format(view)),
            "bigquery": bigquery_rows(bigquery_client, sql.format(f"`{bigquery_dataset}.{view}`")),
        }
        assert got == {"duckdb": [(n, n)], "snowflake": [(n, n)], "bigquery": [(n, n)]}, view
    week = (
        "SELECT workspace_id, tool_type, SUM(calls), MAX(p95_latency_ms) FROM {} "
        "WHERE day BETWEEN DATE '2026-11-16' AND DATE '2026-11-22' "
        "GROUP BY workspace_id, tool_type ORDER BY 2 DESC"
    )
    slowest = [("ws_a", "sql", 1, 5.0), ("ws_a", "http", 4, 38.5)]
    assert norm_rows(warehouse_rows(duck, week.format("tool_latency"))) == slowest
    assert norm_rows(snowflake_rows(snowflake_emulator, schema, week.format("tool_latency"))) == (
        slowest
    )
    assert (
        norm_rows(bigquery_rows(bigquery_client, week.format(f"`{bigquery_dataset}.tool_latency`")))
        == slowest
    )

    # Same rows, same keys, and the same dead letters everywhere.
    count = (
        "SELECT event, COUNT(*), COUNT(DISTINCT message_id) FROM {} GROUP BY event ORDER BY event"
    )
    by_event = norm_rows(warehouse_rows(duck, count.format("events")))
    assert sum(r[1] for r in by_event) == len(KNOWN_RAW) + len(IDENTITY_RAW)
    assert norm_rows(snowflake_rows(snowflake_emulator, schema, count.format("events"))) == by_event
    assert (
        norm_rows(bigquery_rows(bigquery_client, count.format(f"`{bigquery_dataset}.events`")))
        == by_event
    )
    rejected = "SELECT reason, raw_payload FROM {} ORDER BY reason"
    expected_rejected = sorted((reason, raw.decode()) for raw, reason in BAD_RAW.items())
    assert warehouse_rows(duck, rejected.format("rejected_events")) == expected_rejected
    assert (
        snowflake_rows(snowflake_emulator, schema, rejected.format("rejected_events"))
        == expected_rejected
    )
    assert (
        bigquery_rows(bigquery_client, rejected.format(f"`{bigquery_dataset}.rejected_events`"))
        == expected_rejected
    )


# ------------------------------------------- shared end-to-end scenario (per warehouse)
LONG_KEY = "x" * 400
HOSTILE_PROPS = {
    "tool_id": "t-hostile",
    "tool_type": "hostile",
    "latency_ms": 1,
    "workspace_id": "ws_h",
    "select": 1,
    "my key": "v",
    "a.b": 2,
    'quo"te': "q",
    "Order": "first",
    "1st": 3,
    LONG_KEY: "long",
    "timestamp": "nope",
}
# One envelope, so the order is fixed: the first sighting types the new column.
EVOLUTION_RAW = orjson.dumps(
    {
        "batch": [
            _ph(
                "tool_used",
                "evo-1",
                f"{DAY2}T01:00:00Z",
                {"tool_type": "evo", "latency_ms": 2, "retries": 2, "workspace_id": "ws_h"},
            ),
            _ph(
                "tool_used",
                "evo-2",
                f"{DAY2}T01:01:00Z",
                {"tool_type": "evo", "latency_ms": 3, "retries": "many", "workspace_id": "ws_h"},
            ),
            _ph("tool_used", "hostile-1", f"{DAY2}T01:02:00Z", HOSTILE_PROPS),
        ]
    }
)
FILLER_RAW = [
    orjson.dumps(
        _ph("page_viewed", f"fill-{i}", f"{DAY2}T02:00:00Z", {"n": i}, distinct_id=f"u{i % 7}")
    )
    for i in range(200)
]
ALL_RAW = KNOWN_RAW + [EVOLUTION_RAW] + FILLER_RAW + list(BAD_RAW)
TOTAL_EVENTS = len(KNOWN_RAW) + 3 + len(FILLER_RAW)


def run_killed_then_replayed(
    make_pipeline, target: str, env: dict[str, str], count_events: Any, **settings: Any
) -> Any:
    """Raw events through real workers into DuckDB and ``target``; the target's sink worker is
    SIGKILLed mid-stream and restarted, then the whole normalized range is replayed to it.

    Returns (pipeline, events counted at the kill, replay summary).
    """
    import json
    import time

    pipeline = make_pipeline(
        sinks=("duckdb", target),
        extra_env={
            **env,
            "ETL_DELIVERY__BATCH_MAX_EVENTS": "40",
            f"ETL_{target.upper()}__FLUSH_MAX_EVENTS": "40",
            # The killed member leaves the group sooner, so its successor starts sooner.
            "ETL_KAFKA__SESSION_TIMEOUT": "6",
            "ETL_KAFKA__REBALANCE_TIMEOUT": "6",
            "ETL_KAFKA__HEARTBEAT_INTERVAL": "0.5",
        },
        **settings,
    )
    pipeline.produce(ALL_RAW)
    pipeline.start()
    deadline = time.monotonic() + 90
    at_kill = 0
    while time.monotonic() < deadline:
        pipeline.check_alive()
        try:
            at_kill = count_events()
        except Exception:  # tables not created yet
            at_kill = 0
        if at_kill >= 40:
            break
        time.sleep(0.1)
    pipeline.kill(f"sink:{target}")
    assert 0 < at_kill < TOTAL_EVENTS, (
        f"the kill must land mid-stream (saw {at_kill} of {TOTAL_EVENTS})"
    )
    pipeline.start([f"sink:{target}"])
    pipeline.wait_drained(timeout=150)
    pipeline.check_alive()
    landed = count_events()
    if landed != TOTAL_EVENTS:
        log = (pipeline.work_dir / "logs" / f"worker-sink-{target}.log").read_text(errors="replace")
        problems = [
            line
            for line in log.splitlines()
            if '"level":"warn' in line.lower() or '"level":"error"' in line.lower()
        ]
        pytest.fail(
            f"{landed} of {TOTAL_EVENTS} events in {target} after the drain (kill at {at_kill}); "
            "sink worker warnings/errors:\n" + "\n".join(problems[-30:])
        )

    done = pipeline.cli(
        "replay",
        "--source",
        "normalized",
        "--range",
        "0:0-",
        "--range",
        "1:0-",
        "--sinks",
        target,
        "--no-progress",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return pipeline, at_kill, summary
