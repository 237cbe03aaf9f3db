"""etl forget in all three warehouses (DuckDB, Snowflake on fakesnow, BigQuery on bqemulator).

Real workers fill the warehouses; ``etl forget`` erases a person (following
an ``aliases`` table where one exists); a raw ``etl replay`` of the whole
window then leaves that person's row counts at 0 everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sinks.duckdb import wait_for_lock
from tests.conftest import warehouse_rows
from tests.emulators.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
    SNOWFLAKE_TEST_DATABASE,
    bigquery_client,
    bigquery_dataset,
    bigquery_emulator,
    snowflake_conn_kwargs,
    snowflake_emulator,
)
from tests.test_forget import FORGOTTEN, events, last_json
from tests.test_warehouse_parity import (
    bigquery_rows,
    bigquery_target,
    snowflake_rows,
    snowflake_target,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Per table: the person-id columns a count looks at.
TABLES = {
    "events": ("distinct_id", "user_id", "anonymous_id"),
    "flow_executed": ("distinct_id",),
    "tool_used": ("distinct_id",),
    "aliases": ("previous_id", "user_id"),
    "users": ("user_id",),
}


def count_sql(table: str, qualify: Any, ph: Any, ids: tuple[str, ...]) -> tuple[str, list[Any]]:
    params: list[Any] = []
    ors = []
    for col in TABLES.get(table, ()):
        marks = []
        for i in ids:
            params.append(i)
            marks.append(ph(len(params) - 1))
        ors.append(f"{col} IN ({', '.join(marks)})")
    if table == "rejected_events":
        for i in ids:
            params.append(json.dumps(i))
            ors.append(f"STRPOS(raw_payload, {ph(len(params) - 1)}) > 0")
    return f"SELECT COUNT(*) FROM {qualify(table)} WHERE {' OR '.join(ors)}", params


def test_forget_then_raw_replay_in_all_three_warehouses(
    make_pipeline,
    snowflake_emulator,  # noqa: F811
    snowflake_conn_kwargs,  # noqa: F811
    bigquery_emulator,  # noqa: F811
    bigquery_client,  # noqa: F811
    bigquery_dataset,  # noqa: F811
    tmp_path: Path,
) -> None:
    from google.cloud import bigquery

    sf_settings, sf_env, schema = snowflake_target(snowflake_conn_kwargs)
    bq_settings, bq_env = bigquery_target(bigquery_emulator, bigquery_dataset)
    env = {
        **sf_env,
        **bq_env,
        "ETL_DELIVERY__FLUSH_INTERVAL": "0.3",
        "ETL_FLAGS__POSTHOG_MODE": "off",
        "ETL_ERASURE__STATE_PATH": str(tmp_path / "erasure.sqlite"),
        "ETL_ERASURE__HMAC_SECRET": "erasure-test-key",
        "ETL_ERASURE__RELOAD_INTERVAL": "0.2",
    }
    p = make_pipeline(
        sinks=("duckdb", "snowflake", "bigquery"),
        snowflake=sf_settings,
        bigquery=bq_settings,
        extra_env=env,
    )
    duck = Path(p.settings.duckdb.path)
    p.produce(events())
    p.start()
    p.wait_drained(300)
    p.stop()  # free the DuckDB file for the aliases table below

    # The aliases table another change adds, in each warehouse.
    # The pipeline fills users and aliases; add an older alias of hers in each warehouse.
    insert = (
        "INSERT INTO aliases (previous_id, user_id) VALUES ('alice-old', 'alice'), "
        "('bob-old', 'bob')"
    )
    con = wait_for_lock(duck, timeout=60, read_only=False)
    con.execute(insert)
    con.close()
    sf = snowflake_emulator.connect(database=SNOWFLAKE_TEST_DATABASE, schema=schema)
    sf.cursor().execute(insert)
    sf.close()
    bigquery_rows(
        bigquery_client, insert.replace("INTO aliases", f"INTO `{bigquery_dataset}.aliases`")
    )

    def counts(ids: tuple[str, ...]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"duckdb": {}, "snowflake": {}, "bigquery": {}}
        for table in (*TABLES, "rejected_events"):
            sql, params = count_sql(table, lambda t: t, lambda i: "?", ids)
            out["duckdb"][table] = warehouse_rows(duck, sql, params)[0][0]
            sql, params = count_sql(table, lambda t: t, lambda i: "%s", ids)
            out["snowflake"][table] = snowflake_rows(snowflake_emulator, schema, sql, params)[0][0]
            sql, params = count_sql(
                table, lambda t: f"`{bigquery_dataset}.{t}`", lambda i: f"@p{i}", ids
            )
            bq_params = [
                bigquery.ScalarQueryParameter(f"p{i}", "STRING", v) for i, v in enumerate(params)
            ]
            out["bigquery"][table] = bigquery_rows(bigquery_client, sql, bq_params)[0][0]
        return out

    before = counts(FORGOTTEN)
    expected = {
        "events": 4,
        "flow_executed": 1,
        "tool_used": 1,
        "aliases": 2,
        "users": 1,
        "rejected_events": 1,
    }
    assert before == {w: expected for w in ("duckdb", "snowflake", "bigquery")}
    bob = counts(("bob", "bob-old"))

    result = last_json(p.cli("forget", "--distinct-id", "alice", "--yes", "--json", timeout=300))
    assert result["status"] == "complete", result
    assert result["linked_ids"] == 2
    zero = dict.fromkeys(expected, 0)
    assert counts(FORGOTTEN) == {w: zero for w in ("duckdb", "snowflake", "bigquery")}
    assert counts(("bob", "bob-old")) == bob
    for name in ("duckdb", "snowflake", "bigquery"):
        assert result["destinations"][name]["detail"]["tables"]["events"] == 4

    replay = p.cli(
        "replay", "--source", "raw", "--from", "-1h", "--json", "--no-progress", timeout=300
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert json.loads(replay.stdout.strip().splitlines()[-1])["events"] > 0
    assert counts(FORGOTTEN) == {w: zero for w in ("duckdb", "snowflake", "bigquery")}
    assert counts(("bob", "bob-old"))["duckdb"]["events"] == bob["duckdb"]["events"]
