"""What the local warehouse emulators can do, proven through the REAL vendor clients.

* Snowflake: fakesnow 0.12.1 in server mode <- snowflake-connector-python 4.8.1
* BigQuery:  bqemulator 1.4.0 (own venv)      <- google-cloud-bigquery 3.47

These tests are the capability sheet for the sink authors: a passing test is a feature
the sinks may rely on locally; a ``pytest.raises`` / "QUIRK" test pins down a known gap
(with the exact error), so an emulator upgrade that changes behaviour shows up here.
Timings are attached with ``record_property`` and printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import snowflake.connector
from google.api_core import exceptions as gexc
from google.cloud import bigquery

try:
    from tests.emulators.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
        bigquery_client,
        bigquery_dataset,
        bigquery_emulator,
        snowflake_conn_kwargs,
        snowflake_connection,
        snowflake_emulator,
    )
except ImportError:  # pytest put tests/ (not the repo root) on sys.path
    from emulators.fixtures import (  # type: ignore[no-redef]  # noqa: F401
        bigquery_client,
        bigquery_dataset,
        bigquery_emulator,
        snowflake_conn_kwargs,
        snowflake_connection,
        snowflake_emulator,
    )

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
N_BULK = 5000


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _report(record_property, name: str, rows: int, seconds: float) -> None:
    rate = _rate(rows, seconds)
    record_property(name, f"{rate:.0f} rows/s ({rows} rows in {seconds:.2f}s)")
    print(f"\n[emulator throughput] {name}: {rate:,.0f} rows/s ({rows} rows in {seconds:.2f}s)")


# ======================================================================================
# Snowflake (fakesnow server mode)
# ======================================================================================

SF_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS events (
    message_id  VARCHAR NOT NULL,
    event       VARCHAR,
    timestamp   TIMESTAMP_TZ,
    received_at TIMESTAMP_NTZ,
    properties  VARIANT,
    tags        ARRAY,
    n           NUMBER(38, 0),
    PRIMARY KEY (message_id)
) CLUSTER BY (to_date(timestamp), event)
"""

# staging keeps the semi-structured columns as JSON text; the MERGE parses them
SF_STAGING_COLS = (
    "message_id VARCHAR, event VARCHAR, timestamp TIMESTAMP_TZ, properties VARCHAR, tags VARCHAR, "
    "n NUMBER(38, 0)"
)

# fakesnow needs function calls on source columns to happen in a USING subquery (see
# test_sf_merge_with_function_in_when_clause_fails); this form also runs on Snowflake.
SF_MERGE = """
MERGE INTO events t
USING (
    SELECT message_id, event, timestamp, PARSE_JSON(properties) AS properties,
           PARSE_JSON(tags) AS tags, n
    FROM staging
) s
ON t.message_id = s.message_id
WHEN MATCHED THEN UPDATE SET
    event = s.event, timestamp = s.timestamp, properties = s.properties, tags = s.tags, n = s.n
WHEN NOT MATCHED THEN INSERT (message_id, event, timestamp, properties, tags, n)
    VALUES (s.message_id, s.event, s.timestamp, s.properties, s.tags, s.n)
"""


def sf_all(conn, sql: str, params=None) -> list[tuple]:
    return conn.cursor().execute(sql, params).fetchall()


def sf_rows(n: int, *, start: int = 0, event: str = "click") -> list[tuple]:
    return [
        (
            f"m{i}",
            event,
            T0 + dt.timedelta(seconds=i),
            json.dumps({"model": f"g{i % 3}", "latency_ms": i}),
            json.dumps(["a", f"t{i % 2}"]),
            i,
        )
        for i in range(start, start + n)
    ]


def test_sf_server_session(snowflake_connection, snowflake_conn_kwargs):
    assert sf_all(snowflake_connection, "select current_database(), current_schema()") == [
        ("ETL_TEST", snowflake_connection.schema)
    ]
    assert snowflake_conn_kwargs["protocol"] == "http"
    assert snowflake_conn_kwargs["host"] == "127.0.0.1"


def test_sf_ddl_variant_timestamps_array_and_cluster_by(snowflake_connection):
    conn = snowflake_connection
    schema = conn.schema
    assert sf_all(conn, "CREATE DATABASE IF NOT EXISTS etl_test") == [
        ("Database ETL_TEST successfully created.",)
    ]
    assert sf_all(conn, f"CREATE SCHEMA IF NOT EXISTS etl_test.{schema}") == [
        (f"Schema {schema} successfully created.",)
    ]
    # CLUSTER BY in CREATE TABLE is accepted (fakesnow logs "Unsupported property clusterproperty")
    assert sf_all(conn, SF_EVENTS_DDL) == [("Table EVENTS successfully created.",)]
    assert sf_all(conn, SF_EVENTS_DDL) == [
        ("Table EVENTS successfully created.",)
    ]  # IF NOT EXISTS: no error
    assert sf_all(conn, "ALTER TABLE events CLUSTER BY (to_date(timestamp), event)") == [
        ("Statement executed successfully.",)
    ]
    # ...but it is a no-op: no clustering key is recorded
    assert sf_all(
        conn,
        "SELECT clustering_key FROM information_schema.tables WHERE table_schema = %s "
        "AND table_name = 'EVENTS'",
        (schema,),
    ) == [(None,)]

    cols = sf_all(
        conn,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'EVENTS' ORDER BY ordinal_position",
        (schema,),
    )
    assert cols == [
        ("MESSAGE_ID", "TEXT", "NO"),
        ("EVENT", "TEXT", "YES"),
        ("TIMESTAMP", "TIMESTAMP_TZ", "YES"),
        ("RECEIVED_AT", "TIMESTAMP_NTZ", "YES"),
        ("PROPERTIES", "VARIANT", "YES"),
        ("TAGS", "VARIANT", "YES"),  # QUIRK: Snowflake reports ARRAY
        ("N", "NUMBER", "YES"),
    ]
    desc = [(r[0], r[1]) for r in sf_all(conn, "DESC TABLE events")]
    assert desc[:4] == [
        ("MESSAGE_ID", "VARCHAR(16777216)"),
        ("EVENT", "VARCHAR(16777216)"),
        ("TIMESTAMP", "TIMESTAMP_TZ(9)"),
        ("RECEIVED_AT", "TIMESTAMP_NTZ(9)"),
    ]


def test_sf_temporary_table_is_private_to_its_session(snowflake_connection, snowflake_emulator):
    conn = snowflake_connection
    assert sf_all(conn, f"CREATE TEMPORARY TABLE staging ({SF_STAGING_COLS})") == [
        ("Table STAGING successfully created.",)
    ]
    conn.cursor().execute("INSERT INTO staging (message_id) VALUES ('x')")
    assert sf_all(conn, "SELECT count(*) FROM staging") == [(1,)]
    other = snowflake_emulator.connect(database=conn.database, schema=conn.schema)
    with pytest.raises(
        snowflake.connector.ProgrammingError, match="Table with name STAGING does not exist!"
    ):
        other.cursor().execute("SELECT count(*) FROM staging")


def test_sf_executemany_pyformat_and_qmark(snowflake_connection, snowflake_emulator):
    conn = snowflake_connection
    conn.cursor().execute(f"CREATE TABLE staging ({SF_STAGING_COLS})")
    cur = conn.cursor()
    # pyformat (default): the connector rewrites this into ONE multi-row INSERT ... VALUES
    cur.executemany(
        "INSERT INTO staging (message_id, event, timestamp, properties, tags, n) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        sf_rows(3),
    )
    assert cur.rowcount == 3

    # qmark: the connector sends an array binding; fakesnow runs it row by row
    qconn = snowflake_emulator.connect(
        database=conn.database, schema=conn.schema, paramstyle="qmark"
    )
    qcur = qconn.cursor()
    qcur.executemany(
        "INSERT INTO staging (message_id, event, timestamp, properties, tags, n) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        sf_rows(2, start=3),
    )
    assert qcur.rowcount == 2
    assert qcur.execute("SELECT count(*) FROM staging WHERE n >= ?", (3,)).fetchall() == [(2,)]

    assert sf_all(conn, "SELECT message_id, timestamp, properties, n FROM staging ORDER BY n") == [
        (
            f"m{i}",
            T0 + dt.timedelta(seconds=i),
            json.dumps({"model": f"g{i % 3}", "latency_ms": i}),
            i,
        )
        for i in range(5)
    ]
    # named pyformat parameters work too
    assert sf_all(conn, "SELECT %(a)s, %(b)s", {"a": 1, "b": "x"}) == [(1, "x")]


def test_sf_executemany_insert_select_is_rejected_by_pyformat_connector(snowflake_connection):
    """Client-side, so identical against real Snowflake: pyformat executemany needs VALUES."""
    conn = snowflake_connection
    conn.cursor().execute("CREATE TABLE t (id VARCHAR, v VARIANT)")
    with pytest.raises(
        snowflake.connector.InterfaceError, match="252001: Failed to rewrite multi-row insert"
    ):
        conn.cursor().executemany(
            "INSERT INTO t SELECT %s, PARSE_JSON(%s)", [("a", "{}"), ("b", "{}")]
        )


def test_sf_qmark_executemany_insert_select_parse_json(snowflake_connection, snowflake_emulator):
    conn = snowflake_connection
    conn.cursor().execute("CREATE TABLE t (id VARCHAR, v VARIANT, ts TIMESTAMP_TZ)")
    q = snowflake_emulator.connect(database=conn.database, schema=conn.schema, paramstyle="qmark")
    cur = q.cursor()
    cur.executemany(
        "INSERT INTO t SELECT ?, PARSE_JSON(?), ?", [("a", '{"x": 1}', T0), ("b", '{"x": 2}', T0)]
    )
    assert cur.rowcount == 2
    assert sf_all(conn, "SELECT id, v:x::int, ts FROM t ORDER BY id") == [
        ("a", 1, T0),
        ("b", 2, T0),
    ]


def test_sf_qmark_executemany_with_null_timestamp_fails_midway(
    snowflake_connection, snowflake_emulator
):
    """QUIRK: a None in a timestamp column of an array binding makes the connector send the
    column untyped; fakesnow then casts the epoch-nanosecond text and fails.  The batch is
    not atomic: rows before the failing one stay inserted."""
    conn = snowflake_connection
    conn.cursor().execute("CREATE TABLE t (id VARCHAR, ts TIMESTAMP_TZ)")
    q = snowflake_emulator.connect(database=conn.database, schema=conn.schema, paramstyle="qmark")
    with pytest.raises(
        snowflake.connector.ProgrammingError,
        match=r'Conversion Error: timestamp field value out of range: "1704067200000000000"',
    ):
        q.cursor().executemany("INSERT INTO t VALUES (?, ?)", [("null-first", None), ("late", T0)])
    assert sf_all(conn, "SELECT id FROM t") == [("null-first",)]


def test_sf_parse_json_into_variant_and_path_queries(snowflake_connection):
    conn = snowflake_connection
    conn.cursor().execute("CREATE TABLE t (id VARCHAR, properties VARIANT, tags ARRAY)")
    conn.cursor().execute(
        "INSERT INTO t SELECT %s, PARSE_JSON(%s), PARSE_JSON(%s)",
        (
            "a",
            json.dumps({"model": "gpt-4o", "usage": {"tokens": 12}, "ok": True}),
            json.dumps(["x", "y"]),
        ),
    )
    assert sf_all(
        conn,
        "SELECT properties:model::string, properties:usage.tokens::int, properties['ok']::boolean, "
        "tags[0]::string, array_size(tags), properties:missing::string FROM t",
    ) == [("gpt-4o", 12, True, "x", 2, None)]
    # VARIANT comes back as JSON text (compact; Snowflake pretty-prints it)
    (props, typ) = sf_all(conn, "SELECT properties, typeof(properties) FROM t")[0]
    assert json.loads(props) == {"model": "gpt-4o", "usage": {"tokens": 12}, "ok": True}
    assert typ == "JSON"  # QUIRK: Snowflake says OBJECT


def test_sf_merge_upsert_from_staging(snowflake_connection):
    conn = snowflake_connection
    cur = conn.cursor()
    cur.execute(SF_EVENTS_DDL)
    cur.execute(f"CREATE TABLE staging ({SF_STAGING_COLS})")
    ins = (
        "INSERT INTO staging (message_id, event, timestamp, properties, tags, n) "
        "VALUES (%s, %s, %s, %s, %s, %s)"
    )

    cur.executemany(ins, sf_rows(3))
    assert cur.execute(SF_MERGE).fetchall() == [(3, 0)]
    assert [c.name for c in cur.description] == [
        "number of rows inserted",
        "number of rows updated",
    ]

    cur.execute("TRUNCATE TABLE staging")
    cur.executemany(ins, sf_rows(2, start=2, event="view"))  # m2 exists, m3 is new
    assert cur.execute(SF_MERGE).fetchall() == [(1, 1)]

    assert sf_all(
        conn,
        "SELECT message_id, event, timestamp, properties:model::string, tags[1]::string "
        "FROM events ORDER BY n",
    ) == [
        ("m0", "click", T0, "g0", "t0"),
        ("m1", "click", T0 + dt.timedelta(seconds=1), "g1", "t1"),
        ("m2", "view", T0 + dt.timedelta(seconds=2), "g2", "t0"),
        ("m3", "view", T0 + dt.timedelta(seconds=3), "g0", "t1"),
    ]


def test_sf_merge_with_function_in_when_clause_fails(snowflake_connection):
    """LIMITATION: fakesnow copies only *bare* source columns of the WHEN clauses into its
    merge_candidates table, so ``SET col = PARSE_JSON(s.col)`` cannot be resolved.
    Workaround (works on Snowflake too): do the PARSE_JSON in a USING subquery (SF_MERGE)."""
    conn = snowflake_connection
    cur = conn.cursor()
    cur.execute(SF_EVENTS_DDL)
    cur.execute(f"CREATE TABLE staging ({SF_STAGING_COLS})")
    with pytest.raises(
        snowflake.connector.ProgrammingError,
        match='Table "S" does not have a column named "PROPERTIES"',
    ):
        cur.execute(
            "MERGE INTO events t USING staging s ON t.message_id = s.message_id "
            "WHEN MATCHED THEN UPDATE SET properties = PARSE_JSON(s.properties) "
            "WHEN NOT MATCHED THEN INSERT (message_id, properties) "
            "VALUES (s.message_id, PARSE_JSON(s.properties))"
        )


def test_sf_alter_table_add_column(snowflake_connection):
    conn = snowflake_connection
    conn.cursor().execute(SF_EVENTS_DDL)
    ok = [("Statement executed successfully.",)]
    assert sf_all(conn, "ALTER TABLE events ADD COLUMN model VARCHAR") == ok
    assert sf_all(conn, "ALTER TABLE events ADD COLUMN IF NOT EXISTS model VARCHAR") == ok
    assert sf_all(conn, "ALTER TABLE events ADD COLUMN latency_ms FLOAT, cost NUMBER(12, 6)") == ok
    cols = sf_all(
        conn,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'EVENTS' ORDER BY ordinal_position",
        (conn.schema,),
    )
    assert cols[-3:] == [("MODEL", "TEXT"), ("LATENCY_MS", "FLOAT"), ("COST", "NUMBER")]


def test_sf_views_percentiles_and_date_functions(snowflake_connection):
    conn = snowflake_connection
    cur = conn.cursor()
    cur.execute(SF_EVENTS_DDL)
    cur.execute(f"CREATE TABLE staging ({SF_STAGING_COLS})")
    rows = [
        (
            f"m{i}",
            "click" if i % 2 else "view",
            T0 + dt.timedelta(hours=10 * i),
            json.dumps({"model": "g", "latency_ms": (i + 1) * 10}),
            "[]",
            i,
        )
        for i in range(6)
    ]
    cur.executemany("INSERT INTO staging VALUES (%s, %s, %s, %s, %s, %s)", rows)
    cur.execute(SF_MERGE)
    assert sf_all(
        conn,
        """
        CREATE OR REPLACE VIEW daily AS
        SELECT to_date(timestamp) AS day,
               date_trunc('day', timestamp) AS day_start,
               count(*) AS events,
               count_if(event = 'click') AS clicks,
               iff(count(*) > 2, 'busy', 'quiet') AS load,
               median(properties:latency_ms::float) AS p50,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY properties:latency_ms::float) AS p90,
               approx_percentile(properties:latency_ms::float, 0.5) AS approx_p50
        FROM events GROUP BY 1, 2
        """,
    ) == [("View DAILY successfully created.",)]
    got = sf_all(conn, "SELECT * FROM daily ORDER BY day")
    assert [r[:5] for r in got] == [
        (dt.date(2024, 1, 1), T0, 3, 1, "busy"),
        (dt.date(2024, 1, 2), T0 + dt.timedelta(days=1), 2, 1, "quiet"),
        (dt.date(2024, 1, 3), T0 + dt.timedelta(days=2), 1, 1, "quiet"),
    ]
    assert [(r[5], r[6]) for r in got] == [
        (20.0, pytest.approx(28.0)),
        (45.0, pytest.approx(49.0)),
        (60.0, 60.0),
    ]
    assert [r[7] for r in got] == [
        pytest.approx(20.0, abs=10),
        pytest.approx(45.0, abs=5),
        pytest.approx(60.0),
    ]
    assert sf_all(conn, "CREATE OR REPLACE VIEW daily AS SELECT 1 AS x") == [
        ("View DAILY successfully created.",)
    ]
    assert sf_all(conn, "SELECT * FROM daily") == [(1,)]
    assert sf_all(conn, "DROP VIEW IF EXISTS daily") == [("DAILY successfully dropped.",)]


def test_sf_put_and_copy_into_parquet_then_merge_5000(
    snowflake_connection, record_property, tmp_path
):
    """Fastest load path: a parquet file -> PUT to a stage -> COPY INTO (MATCH_BY_COLUMN_NAME)
    -> MERGE.

    PUT works in server mode: fakesnow hands the connector a GCS-style presigned URL on
    itself.  COPY ... MATCH_BY_COLUMN_NAME needs a PERMANENT staging table (see
    test_sf_copy_into_temporary_table_fails)."""
    conn = snowflake_connection
    cur = conn.cursor()
    cur.execute(SF_EVENTS_DDL)
    cur.execute(f"CREATE TABLE staging ({SF_STAGING_COLS})")
    cur.execute("CREATE TEMPORARY STAGE batches")

    rows = sf_rows(N_BULK)
    started = time.perf_counter()
    table = pa.table(
        {
            "MESSAGE_ID": [r[0] for r in rows],
            "EVENT": [r[1] for r in rows],
            "TIMESTAMP": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "PROPERTIES": [r[3] for r in rows],
            "TAGS": [r[4] for r in rows],
            "N": [r[5] for r in rows],
        }
    )
    path = tmp_path / "batch-0001.parquet"
    pq.write_table(table, path)
    put = cur.execute(f"PUT file://{path} @batches AUTO_COMPRESS=FALSE OVERWRITE=TRUE").fetchall()
    assert put == [
        (
            "batch-0001.parquet",
            "batch-0001.parquet",
            path.stat().st_size,
            path.stat().st_size,
            "PARQUET",
            "PARQUET",
            "UPLOADED",
            "",
        )
    ]
    copied = cur.execute(
        "COPY INTO staging FROM @batches FILE_FORMAT = (TYPE = PARQUET) "
        "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE PURGE = TRUE"
    ).fetchall()
    assert [(r[0], r[1], r[2], r[3]) for r in copied] == [
        ("batches/batch-0001.parquet", "LOADED", N_BULK, N_BULK)
    ]
    assert cur.execute(SF_MERGE).fetchall() == [(N_BULK, 0)]
    elapsed = time.perf_counter() - started
    _report(record_property, "snowflake parquet PUT+COPY+MERGE", N_BULK, elapsed)

    assert sf_all(
        conn,
        "SELECT count(*), count(DISTINCT message_id), max(properties:latency_ms::int), "
        "min(timestamp) FROM events",
    ) == [(N_BULK, N_BULK, N_BULK - 1, T0)]
    assert sf_all(conn, "LIST @batches") == []  # PURGE removed the staged file
    # a second MERGE of the same batch updates every row
    assert cur.execute(SF_MERGE).fetchall() == [(0, N_BULK)]


def test_sf_executemany_then_merge_5000(snowflake_connection, record_property):
    """The plain-DB-API path (pyformat executemany -> one multi-row INSERT) for comparison."""
    conn = snowflake_connection
    cur = conn.cursor()
    cur.execute(SF_EVENTS_DDL)
    cur.execute(f"CREATE TEMPORARY TABLE staging ({SF_STAGING_COLS})")
    rows = sf_rows(N_BULK)
    started = time.perf_counter()
    cur.executemany(
        "INSERT INTO staging (message_id, event, timestamp, properties, tags, n) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        rows,
    )
    assert cur.rowcount == N_BULK
    inserted = time.perf_counter()
    assert cur.execute(SF_MERGE).fetchall() == [(N_BULK, 0)]
    done = time.perf_counter()
    _report(record_property, "snowflake pyformat executemany", N_BULK, inserted - started)
    _report(record_property, "snowflake pyformat executemany+MERGE", N_BULK, done - started)
    assert sf_all(conn, "SELECT count(*) FROM events") == [(N_BULK,)]


def test_sf_qmark_executemany_throughput(snowflake_connection, snowflake_emulator, record_property):
    """qmark array binding is executed row by row by fakesnow: the slowest path (~200 rows/s)."""
    conn = snowflake_connection
    conn.cursor().execute(f"CREATE TABLE staging ({SF_STAGING_COLS})")
    q = snowflake_emulator.connect(database=conn.database, schema=conn.schema, paramstyle="qmark")
    n = 300
    started = time.perf_counter()
    q.cursor().executemany("INSERT INTO staging VALUES (?, ?, ?, ?, ?, ?)", sf_rows(n))
    _report(record_property, "snowflake qmark executemany", n, time.perf_counter() - started)
    assert sf_all(conn, "SELECT count(*) FROM staging") == [(n,)]


def test_sf_copy_ndjson_into_variant_column(snowflake_connection, tmp_path):
    conn = snowflake_connection
    cur = conn.cursor()
    cur.execute("CREATE TEMPORARY TABLE raw (v VARIANT)")
    cur.execute("CREATE TEMPORARY STAGE st")
    path = tmp_path / "batch.ndjson"
    path.write_text(
        "\n".join(json.dumps({"message_id": f"m{i}", "properties": {"i": i}}) for i in range(3))
        + "\n"
    )
    put = cur.execute(f"PUT file://{path} @st").fetchall()
    assert (
        put[0][1] == "batch.ndjson.gz" and put[0][6] == "UPLOADED"
    )  # AUTO_COMPRESS defaults to TRUE
    copied = cur.execute("COPY INTO raw FROM @st FILE_FORMAT = (TYPE = JSON)").fetchall()
    assert [(r[0], r[1], r[2]) for r in copied] == [("st/batch.ndjson.gz", "LOADED", 3)]
    assert sf_all(conn, "SELECT v:message_id::string, v:properties.i::int FROM raw ORDER BY 2") == [
        ("m0", 0),
        ("m1", 1),
        ("m2", 2),
    ]
    # copying the same file again is skipped via load history, as in Snowflake
    again = cur.execute("COPY INTO raw FROM @st FILE_FORMAT = (TYPE = JSON)").fetchall()
    assert (again[0][1], again[0][2]) == ("LOAD_SKIPPED", 0)


def test_sf_copy_with_transformation_from_json_fails(snowflake_connection, tmp_path):
    """LIMITATION: COPY INTO t FROM (SELECT $1:field ...) only works for PARQUET stages."""
    conn = snowflake_connection
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (message_id VARCHAR)")
    cur.execute("CREATE TEMPORARY STAGE st")
    path = tmp_path / "b.ndjson"
    path.write_text('{"message_id": "m0"}\n')
    cur.execute(f"PUT file://{path} @st")
    with pytest.raises(
        snowflake.connector.ProgrammingError,
        match='Referenced column "message_id" not found in FROM clause!',
    ):
        cur.execute("COPY INTO t FROM (SELECT $1:message_id FROM @st) FILE_FORMAT = (TYPE = JSON)")


def test_sf_copy_into_temporary_table_fails(snowflake_connection, tmp_path):
    """LIMITATION: MATCH_BY_COLUMN_NAME looks the target up in information_schema, which
    does not list temporary tables."""
    conn = snowflake_connection
    cur = conn.cursor()
    cur.execute("CREATE TEMPORARY TABLE tmp_staging (message_id VARCHAR)")
    cur.execute("CREATE TEMPORARY STAGE st")
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"MESSAGE_ID": ["m0"]}), path)
    cur.execute(f"PUT file://{path} @st AUTO_COMPRESS = FALSE")
    with pytest.raises(
        snowflake.connector.ProgrammingError, match="Table with name TMP_STAGING does not exist!"
    ):
        cur.execute(
            "COPY INTO tmp_staging FROM @st FILE_FORMAT = (TYPE = PARQUET) "
            "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE"
        )


def test_sf_null_timestamps_come_back_as_epoch(snowflake_connection):
    """QUIRK (server mode only): NULL TIMESTAMP_TZ/NTZ values are returned as 1970-01-01.
    Test NULL-ness in SQL (``ts IS NULL``) rather than in Python."""
    conn = snowflake_connection
    conn.cursor().execute(
        "CREATE TABLE t (id INT, ts TIMESTAMP_TZ, ntz TIMESTAMP_NTZ, d DATE, v VARIANT)"
    )
    conn.cursor().execute("INSERT INTO t (id) VALUES (1)")
    assert sf_all(conn, "SELECT ts, ntz, d, v, ts IS NULL, ntz IS NULL FROM t") == [
        (dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(1970, 1, 1), None, None, True, True)
    ]
    assert sf_all(conn, "SELECT min(ts) FROM t WHERE id = 2") == [
        (dt.datetime(1970, 1, 1, tzinfo=UTC),)
    ]


def test_sf_timestamp_tz_is_normalised_to_utc(snowflake_connection):
    """QUIRK: TIMESTAMP_TZ keeps the instant but not the offset (Snowflake keeps +02:00)."""
    conn = snowflake_connection
    conn.cursor().execute("CREATE TABLE t (ts TIMESTAMP_TZ, ntz TIMESTAMP_NTZ)")
    plus2 = dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    conn.cursor().execute("INSERT INTO t VALUES (%s, %s)", (plus2, dt.datetime(2024, 1, 1, 10)))
    conn.cursor().execute("INSERT INTO t (ts) VALUES ('2024-01-01T10:00:00+02:00')")
    rows = sf_all(conn, "SELECT ts, ntz IS NULL FROM t")
    assert rows == [
        (dt.datetime(2024, 1, 1, 8, tzinfo=UTC), False),
        (dt.datetime(2024, 1, 1, 8, tzinfo=UTC), True),
    ]
    assert rows[0][0].utcoffset() == dt.timedelta(0)
    assert sf_all(conn, "SELECT '2024-01-01 10:00:00 +02:00'::timestamp_tz") == [
        (dt.datetime(2024, 1, 1, 8, tzinfo=UTC),)
    ]
    # ...but the same literal is rejected by the implicit cast of INSERT ... VALUES
    with pytest.raises(snowflake.connector.ProgrammingError, match=r"Unknown TimeZone '\+02:00'"):
        conn.cursor().execute("INSERT INTO t (ts) VALUES ('2024-01-01 10:00:00 +02:00')")


def test_sf_unsupported_statements(snowflake_connection, snowflake_emulator):
    conn = snowflake_connection
    with pytest.raises(
        snowflake.connector.ProgrammingError,
        match="ALTER SESSION SET TIMEZONE = 'UTC' not implemented",
    ):
        conn.cursor().execute("ALTER SESSION SET TIMEZONE = 'UTC'")
    q = snowflake_emulator.connect(database=conn.database, schema=conn.schema, paramstyle="qmark")
    with pytest.raises(
        snowflake.connector.ProgrammingError, match="Invalid expression / Unexpected token"
    ):
        q.cursor().execute("SELECT ?::timestamp_tz", (T0,))  # CAST(? AS TIMESTAMP_TZ) works
    assert q.cursor().execute("SELECT CAST(? AS TIMESTAMP_TZ)", (T0,)).fetchall() == [(T0,)]
    # several statements in one execute(): HTTP 500 (use conn.execute_string instead)
    with pytest.raises(snowflake.connector.errors.InternalServerError, match="HTTP 500"):
        conn.cursor().execute("SELECT 1; SELECT 2")
    assert [c.fetchall() for c in conn.execute_string("SELECT 1; SELECT 2")] == [[(1,)], [(2,)]]


# ======================================================================================
# BigQuery (bqemulator)
# ======================================================================================

SF = bigquery.SchemaField
BQ_SCHEMA = [
    SF("message_id", "STRING", mode="REQUIRED"),
    SF("event", "STRING"),
    SF("timestamp", "TIMESTAMP"),
    SF("properties", "JSON"),
    SF("tags", "STRING", mode="REPEATED"),
    SF("n", "INT64"),
]


def bq_events_table(client, dataset: str, name: str = "events") -> bigquery.Table:
    table = bigquery.Table(f"{dataset}.{name}", schema=BQ_SCHEMA)
    table.time_partitioning = bigquery.TimePartitioning(
        type_=bigquery.TimePartitioningType.DAY, field="timestamp"
    )
    table.clustering_fields = ["event", "message_id"]
    return client.create_table(table, exists_ok=True)


def bq_all(client, sql: str, params=None) -> list[tuple]:
    job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params or []))
    return [tuple(row.values()) for row in job.result()]


def bq_ndjson(n: int, *, start: int = 0, event: str = "click") -> bytes:
    return "\n".join(
        json.dumps(
            {
                "message_id": f"m{i}",
                "event": event,
                "timestamp": (T0 + dt.timedelta(minutes=i)).isoformat(),
                "properties": {"model": f"g{i % 3}", "latency_ms": i},
                "tags": ["a", f"t{i % 2}"],
                "n": i,
            }
        )
        for i in range(start, start + n)
    ).encode()


def bq_load_ndjson(client, table: str, data: bytes, **config) -> bigquery.LoadJob:
    job_config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
        schema=BQ_SCHEMA,
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        **config,
    )
    job = client.load_table_from_file(
        io.BytesIO(data), table, job_config=job_config, size=None
    )  # resumable upload
    job.result()
    return job


def bq_merge(dataset: str) -> str:
    return f"""
    MERGE INTO `{dataset}.events` T
    USING `{dataset}.staging` S
    ON T.message_id = S.message_id
    WHEN MATCHED THEN UPDATE SET
        event = S.event, timestamp = S.timestamp, properties = S.properties, tags = S.tags, n = S.n
    WHEN NOT MATCHED THEN INSERT (message_id, event, timestamp, properties, tags, n)
        VALUES (S.message_id, S.event, S.timestamp, S.properties, S.tags, S.n)
    """


def test_bq_emulator_endpoint(bigquery_emulator, bigquery_client):
    endpoint, client = bigquery_emulator
    assert endpoint == bigquery_emulator.endpoint and endpoint.startswith("http://127.0.0.1:")
    assert client is bigquery_client and client.project == "local"
    assert bigquery_emulator.running


def test_bq_create_partitioned_clustered_table_with_json(bigquery_client, bigquery_dataset):
    client = bigquery_client
    assert (
        client.create_dataset(bigquery_dataset, exists_ok=True).dataset_id
        == bigquery_dataset.split(".")[1]
    )
    bq_events_table(client, bigquery_dataset)
    bq_events_table(client, bigquery_dataset)  # exists_ok

    table = client.get_table(f"{bigquery_dataset}.events")
    assert [(f.name, f.field_type, f.mode) for f in table.schema] == [
        ("message_id", "STRING", "REQUIRED"),
        ("event", "STRING", "NULLABLE"),
        ("timestamp", "TIMESTAMP", "NULLABLE"),
        ("properties", "JSON", "NULLABLE"),
        ("tags", "STRING", "REPEATED"),
        ("n", "INT64", "NULLABLE"),
    ]
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY", "timestamp")
    assert table.clustering_fields == ["event", "message_id"]

    ds = bigquery_dataset.split(".")[1]
    assert bq_all(
        client,
        "SELECT column_name, data_type, is_nullable, is_partitioning_column, "
        f"clustering_ordinal_position FROM `{bigquery_dataset}`.INFORMATION_SCHEMA.COLUMNS "
        "WHERE table_name = 'events' ORDER BY ordinal_position",
    ) == [
        ("message_id", "STRING", "NO", "NO", 2),
        ("event", "STRING", "YES", "NO", 1),
        ("timestamp", "TIMESTAMP", "YES", "YES", None),
        ("properties", "JSON", "YES", "NO", None),
        ("tags", "ARRAY<STRING>", "YES", "NO", None),
        ("n", "INT64", "YES", "NO", None),
    ]
    assert bq_all(client, f"SELECT table_name, table_type FROM {ds}.INFORMATION_SCHEMA.TABLES") == [
        ("events", "BASE TABLE")
    ]


def test_bq_resumable_ndjson_load_and_merge_5000(
    bigquery_client, bigquery_dataset, record_property
):
    client = bigquery_client
    bq_events_table(client, bigquery_dataset)
    client.create_table(bigquery.Table(f"{bigquery_dataset}.staging", schema=BQ_SCHEMA))
    data = bq_ndjson(N_BULK)

    started = time.perf_counter()
    load = bq_load_ndjson(client, f"{bigquery_dataset}.staging", data)
    loaded = time.perf_counter()
    merge = client.query(bq_merge(bigquery_dataset))
    merge.result()
    done = time.perf_counter()
    _report(record_property, "bigquery NDJSON resumable load", N_BULK, loaded - started)
    _report(record_property, "bigquery NDJSON load+MERGE", N_BULK, done - started)
    assert (load.state, load.output_rows) == ("DONE", N_BULK)
    assert merge.num_dml_affected_rows == N_BULK

    # second batch: 10 updates (m4990..m4999) + 10 inserts (m5000..m5009)
    bq_load_ndjson(
        client, f"{bigquery_dataset}.staging", bq_ndjson(20, start=N_BULK - 10, event="view")
    )
    merge = client.query(bq_merge(bigquery_dataset))
    merge.result()
    assert merge.num_dml_affected_rows == 20

    assert bq_all(
        client,
        "SELECT count(*), count(DISTINCT message_id), countif(event = 'view'), min(timestamp), "
        f"max(n) FROM `{bigquery_dataset}.events`",
    ) == [(N_BULK + 10, N_BULK + 10, 20, T0, N_BULK + 9)]
    assert bq_all(
        client,
        "SELECT message_id, properties, tags, JSON_VALUE(properties, '$.model'), "
        "JSON_VALUE(properties.model), LAX_INT64(properties.latency_ms) "
        f"FROM `{bigquery_dataset}.events` WHERE n < 2 ORDER BY n",
    ) == [
        ("m0", {"model": "g0", "latency_ms": 0}, ["a", "t0"], "g0", "g0", 0),
        ("m1", {"model": "g1", "latency_ms": 1}, ["a", "t1"], "g1", "g1", 1),
    ]


def test_bq_ndjson_timestamps_with_offsets_are_converted_to_utc(bigquery_client, bigquery_dataset):
    client = bigquery_client
    client.create_table(bigquery.Table(f"{bigquery_dataset}.staging", schema=BQ_SCHEMA))
    data = (
        b'{"message_id": "a", "timestamp": "2024-01-01T10:00:00+02:00"}\n'
        b'{"message_id": "b", "timestamp": "2024-01-01 08:00:00.123456 UTC"}'
    )
    bq_load_ndjson(client, f"{bigquery_dataset}.staging", data)
    assert bq_all(
        client, f"SELECT message_id, timestamp FROM `{bigquery_dataset}.staging` ORDER BY 1"
    ) == [
        ("a", dt.datetime(2024, 1, 1, 8, tzinfo=UTC)),
        ("b", dt.datetime(2024, 1, 1, 8, 0, 0, 123456, tzinfo=UTC)),
    ]


def test_bq_bad_ndjson_fails_the_load_job(bigquery_client, bigquery_dataset):
    client = bigquery_client
    client.create_table(bigquery.Table(f"{bigquery_dataset}.staging", schema=BQ_SCHEMA))
    with pytest.raises(gexc.BadRequest, match='Failed to cast value to numerical: "notint"'):
        bq_load_ndjson(
            client, f"{bigquery_dataset}.staging", b'{"message_id": "a", "n": "notint"}\n'
        )


def test_bq_alter_table_add_column(bigquery_client, bigquery_dataset):
    """QUIRK: adding a column needs BOTH the DDL and ``client.update_table``.

    ``ALTER TABLE ... ADD COLUMN`` changes only the DuckDB table (SQL can use the column,
    but ``get_table().schema`` / INFORMATION_SCHEMA do not show it); ``update_table`` with
    a longer schema changes only the catalog (SQL cannot use the column).  On BigQuery
    either one alone is enough, and running both is harmless (ADD COLUMN IF NOT EXISTS).
    """
    client = bigquery_client
    bq_events_table(client, bigquery_dataset)
    table_id = f"{bigquery_dataset}.events"
    ds = bigquery_dataset.split(".")[1]
    names = [f.name for f in BQ_SCHEMA]

    def catalog_columns() -> list[str]:
        return [
            r[0]
            for r in bq_all(
                client,
                f"SELECT column_name FROM {ds}.INFORMATION_SCHEMA.COLUMNS "
                "WHERE table_name = 'events' ORDER BY ordinal_position",
            )
        ]

    # 1. DDL only: usable in SQL, invisible in the catalog
    bq_all(client, f"ALTER TABLE `{table_id}` ADD COLUMN model STRING")
    bq_all(client, f"ALTER TABLE `{table_id}` ADD COLUMN IF NOT EXISTS model STRING")
    assert bq_all(client, f"SELECT model FROM `{table_id}`") == []
    assert [f.name for f in client.get_table(table_id).schema] == names
    assert catalog_columns() == names

    # 2. update_table only: visible in the catalog, unusable in SQL
    table = client.get_table(table_id)
    table.schema = [*table.schema, SF("model", "STRING"), SF("latency_ms", "FLOAT64")]
    assert [f.name for f in client.update_table(table, ["schema"]).schema] == [
        *names,
        "model",
        "latency_ms",
    ]
    assert catalog_columns() == [*names, "model", "latency_ms"]
    with pytest.raises(
        gexc.BadRequest, match='Table "events" does not have a column with name "latency_ms"'
    ):
        client.query(
            f"INSERT INTO `{table_id}` (message_id, latency_ms) VALUES ('x', 1.5)"
        ).result()

    # 3. both: consistent
    bq_all(client, f"ALTER TABLE `{table_id}` ADD COLUMN IF NOT EXISTS latency_ms FLOAT64")
    job = client.query(
        f"INSERT INTO `{table_id}` (message_id, model, latency_ms) VALUES ('x', 'gpt', 1.5)"
    )
    job.result()
    assert job.num_dml_affected_rows == 1
    assert bq_all(client, f"SELECT model, latency_ms FROM `{table_id}`") == [("gpt", 1.5)]
    assert [(f.name, f.field_type) for f in client.get_table(table_id).schema][-2:] == [
        ("model", "STRING"),
        ("latency_ms", "FLOAT64"),
    ]

    with pytest.raises(gexc.BadRequest, match="Only one ALTER command per statement is supported"):
        bq_all(client, f"ALTER TABLE `{table_id}` ADD COLUMN a STRING, ADD COLUMN b STRING")


def test_bq_query_parameters(bigquery_client):
    params = [
        bigquery.ScalarQueryParameter("a", "INT64", 41),
        bigquery.ScalarQueryParameter("s", "STRING", "hi"),
        bigquery.ScalarQueryParameter("ts", "TIMESTAMP", T0),
        bigquery.ArrayQueryParameter("ids", "STRING", ["m1", "m3"]),
    ]
    assert bq_all(
        bigquery_client,
        "SELECT @a + 1, @s, @ts, (SELECT count(*) FROM UNNEST(['m1', 'm2', 'm3']) id "
        "WHERE id IN UNNEST(@ids))",
        params,
    ) == [(42, "hi", T0, 2)]
    assert bq_all(
        bigquery_client, "SELECT ? * 2", [bigquery.ScalarQueryParameter(None, "INT64", 21)]
    ) == [(42,)]


def test_bq_quantiles_views_and_drop(bigquery_client, bigquery_dataset):
    client = bigquery_client
    bq_events_table(client, bigquery_dataset)
    client.create_table(bigquery.Table(f"{bigquery_dataset}.staging", schema=BQ_SCHEMA))
    bq_load_ndjson(client, f"{bigquery_dataset}.staging", bq_ndjson(101))  # n = 0..100
    client.query(bq_merge(bigquery_dataset)).result()
    events = f"`{bigquery_dataset}.events`"

    assert bq_all(client, f"SELECT APPROX_QUANTILES(n, 4) FROM {events}") == [
        ([0, 25, 50, 75, 100],)
    ]
    # pick quantiles with UNNEST ... WITH OFFSET, not qs[OFFSET(k)]
    # (see test_bq_offset_into_approx_quantiles_is_unreliable)
    assert bq_all(
        client,
        f"WITH q AS (SELECT APPROX_QUANTILES(n, 100) qs FROM {events}) "
        f"SELECT o, v FROM q, UNNEST(qs) v WITH OFFSET o WHERE o IN (50, 99) ORDER BY o",
    ) == [(50, 50), (99, 99)]
    assert bq_all(
        client,
        "SELECT DISTINCT PERCENTILE_CONT(n, 0.5) OVER (), PERCENTILE_CONT(n, 0.9) OVER () "
        f"FROM {events}",
    ) == [(50.0, 90.0)]
    assert bq_all(
        client,
        f"SELECT COUNTIF(n >= 50), IF(COUNT(*) > 100, 'big', 'small'), DATE(MIN(timestamp)), "
        "TIMESTAMP_TRUNC(MAX(timestamp), HOUR), DATE_TRUNC(DATE(MAX(timestamp)), MONTH) "
        f"FROM {events}",
    ) == [(51, "big", dt.date(2024, 1, 1), T0 + dt.timedelta(hours=1), dt.date(2024, 1, 1))]

    view = f"`{bigquery_dataset}.daily`"
    bq_all(
        client,
        f"CREATE OR REPLACE VIEW {view} AS "
        "SELECT DATE(timestamp) AS day, event, COUNT(*) AS events, "
        "COUNTIF(n >= 50) AS late, "
        "AVG(CAST(JSON_VALUE(properties, '$.latency_ms') AS FLOAT64)) AS avg_latency "
        f"FROM {events} GROUP BY day, event",
    )
    assert bq_all(client, f"SELECT * FROM {view}") == [
        (dt.date(2024, 1, 1), "click", 101, 51, 50.0)
    ]
    bq_all(client, f"CREATE OR REPLACE VIEW {view} AS SELECT 1 AS x")
    assert bq_all(client, f"SELECT * FROM {view}") == [(1,)]

    bq_all(client, f"DROP TABLE `{bigquery_dataset}.staging`")
    bq_all(client, f"DROP TABLE IF EXISTS `{bigquery_dataset}.staging`")
    with pytest.raises(gexc.NotFound, match=f"Table {bigquery_dataset}.staging was not found"):
        bq_all(client, f"SELECT 1 FROM `{bigquery_dataset}.staging`")
    assert sorted(t.table_id for t in client.list_tables(bigquery_dataset)) == ["daily", "events"]


def test_bq_insert_rows_json(bigquery_client, bigquery_dataset):
    """Streaming inserts work when JSON columns are sent as JSON *text*."""
    client = bigquery_client
    bq_events_table(client, bigquery_dataset)
    table_id = f"{bigquery_dataset}.events"
    errors = client.insert_rows_json(
        table_id,
        [
            {
                "message_id": "s1",
                "event": "e",
                "timestamp": "2024-01-01T00:00:00Z",
                "properties": '{"a": 1}',
                "tags": ["t"],
                "n": 1,
            }
        ],
        retry=None,
    )
    assert errors == []
    assert bq_all(client, f"SELECT message_id, timestamp, properties, tags FROM `{table_id}`") == [
        ("s1", T0, {"a": 1}, ["t"])
    ]
    assert [dict(r) for r in client.list_rows(table_id)][0]["properties"] == {"a": 1}


def test_bq_insert_rows_json_with_dict_for_json_column_fails(bigquery_client, bigquery_dataset):
    """LIMITATION: a dict for a JSON column is turned into Python repr ("{'a': 1}") and
    DuckDB rejects it -> HTTP 500.  Always pass retry=None against the emulator: the
    client's default retry would retry the 500 for up to 10 minutes."""
    client = bigquery_client
    bq_events_table(client, bigquery_dataset)
    with pytest.raises(gexc.InternalServerError, match="An internal error occurred"):
        client.insert_rows_json(
            f"{bigquery_dataset}.events", [{"message_id": "d", "properties": {"a": 1}}], retry=None
        )


def test_bq_insert_rows_json_does_not_validate_rows(bigquery_client, bigquery_dataset):
    """QUIRK: unknown fields and missing REQUIRED fields are accepted silently (BigQuery
    returns insertErrors), and a numeric TIMESTAMP is read as MICROseconds, not seconds."""
    client = bigquery_client
    bq_events_table(client, bigquery_dataset)
    table_id = f"{bigquery_dataset}.events"
    rows = [
        {"message_id": "u", "no_such_field": 1},
        {"event": "no-id"},
        {"message_id": "num", "timestamp": 1_704_067_200},
    ]
    assert client.insert_rows_json(table_id, rows, retry=None) == []
    assert bq_all(
        client,
        f"SELECT message_id, event, timestamp FROM `{table_id}` ORDER BY message_id NULLS FIRST",
    ) == [
        (None, "no-id", None),
        ("num", None, dt.datetime(1970, 1, 1, 0, 28, 24, 67200, tzinfo=UTC)),
        ("u", None, None),
    ]


def test_bq_multipart_uploads_are_rejected(bigquery_client, bigquery_dataset):
    """LIMITATION: only resumable uploads work.  ``load_table_from_file(..., size=N)`` and
    ``load_table_from_json`` use a multipart upload and fail; pass ``size=None``."""
    client = bigquery_client
    client.create_table(bigquery.Table(f"{bigquery_dataset}.staging", schema=BQ_SCHEMA))
    data = bq_ndjson(2)
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON, schema=BQ_SCHEMA
    )
    msg = r"multipart upload's second part has unsupported Content-Type '\*/\*'"
    with pytest.raises(gexc.BadRequest, match=msg):
        client.load_table_from_file(
            io.BytesIO(data), f"{bigquery_dataset}.staging", job_config=config, size=len(data)
        )
    with pytest.raises(gexc.BadRequest, match=msg):
        client.load_table_from_json(
            [{"message_id": "a"}],
            f"{bigquery_dataset}.staging",
            job_config=bigquery.LoadJobConfig(schema=BQ_SCHEMA),
        )


def test_bq_parquet_load(bigquery_client, bigquery_dataset):
    client = bigquery_client
    client.create_table(bigquery.Table(f"{bigquery_dataset}.staging", schema=BQ_SCHEMA))
    table = pa.table(
        {
            "message_id": ["a", "b"],
            "event": ["e", "e"],
            "timestamp": pa.array([T0, None], pa.timestamp("us", tz="UTC")),
            "properties": ['{"k": 1}', None],
            "tags": [["x"], []],
            "n": [1, 2],
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    buf.seek(0)
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET, write_disposition="WRITE_APPEND"
    )
    job = client.load_table_from_file(
        buf, f"{bigquery_dataset}.staging", job_config=config, size=None
    )
    assert job.result().output_rows == 2
    assert bq_all(
        client,
        f"SELECT message_id, timestamp, properties, tags FROM `{bigquery_dataset}.staging` "
        "ORDER BY 1",
    ) == [
        ("a", T0, {"k": 1}, ["x"]),
        ("b", None, None, []),
    ]


def test_bq_ddl_created_tables_lose_json_type_and_partitioning(bigquery_client, bigquery_dataset):
    """LIMITATION: CREATE TABLE DDL stores JSON columns as STRING and drops PARTITION BY /
    CLUSTER BY metadata.  Create tables with ``client.create_table`` instead."""
    client = bigquery_client
    bq_all(
        client,
        f"CREATE TABLE IF NOT EXISTS `{bigquery_dataset}.ddl_events` "
        "(message_id STRING NOT NULL, ts TIMESTAMP, "
        f"props JSON, tags ARRAY<STRING>) PARTITION BY DATE(ts) CLUSTER BY message_id",
    )
    table = client.get_table(f"{bigquery_dataset}.ddl_events")
    assert [(f.name, f.field_type, f.mode) for f in table.schema] == [
        ("message_id", "STRING", "REQUIRED"),
        ("ts", "TIMESTAMP", "NULLABLE"),
        ("props", "STRING", "NULLABLE"),  # declared JSON
        ("tags", "STRING", "REPEATED"),
    ]
    assert (table.time_partitioning, table.clustering_fields) == (None, None)


def test_bq_offset_into_approx_quantiles_is_unreliable(bigquery_client, bigquery_dataset):
    """QUIRK: indexing the APPROX_QUANTILES array with [OFFSET(k)] is off by one in some
    query shapes (BigQuery returns 50 / 0 / 100 below).  The array itself is right: take
    it whole, or use UNNEST(qs) WITH OFFSET, or PERCENTILE_CONT."""
    client = bigquery_client
    client.create_table(bigquery.Table(f"{bigquery_dataset}.nums", schema=[SF("n", "INT64")]))
    bq_all(
        client,
        f"INSERT INTO `{bigquery_dataset}.nums` SELECT x FROM UNNEST(GENERATE_ARRAY(0, 100)) x",
    )
    nums = f"`{bigquery_dataset}.nums`"
    # directly on the aggregate: one element too far
    assert bq_all(
        client,
        f"SELECT APPROX_QUANTILES(n, 100)[OFFSET(50)], APPROX_QUANTILES(n, 100)[OFFSET(0)], "
        f"APPROX_QUANTILES(n, 100)[SAFE_OFFSET(100)] FROM {nums}",
    ) == [(51, 1, None)]
    # through a CTE over a table: one element short
    assert bq_all(
        client,
        f"WITH q AS (SELECT APPROX_QUANTILES(n, 100) qs FROM {nums}) "
        "SELECT qs[OFFSET(50)], qs[OFFSET(0)], qs[OFFSET(100)] FROM q",
    ) == [(49, None, 99)]
    # through a CTE over UNNEST: correct
    assert bq_all(
        client,
        "WITH q AS (SELECT APPROX_QUANTILES(x, 100) qs FROM UNNEST(GENERATE_ARRAY(0, 100)) x) "
        "SELECT qs[OFFSET(50)], qs[OFFSET(0)] FROM q",
    ) == [(50, 0)]
    # plain arrays are indexed correctly
    assert bq_all(client, f"SELECT ARRAY_AGG(n ORDER BY n)[OFFSET(50)] FROM {nums}") == [(50,)]


def test_bq_load_schema_update_options_are_ignored(bigquery_client, bigquery_dataset):
    """QUIRK: ALLOW_FIELD_ADDITION on a load job neither adds the column nor fails."""
    client = bigquery_client
    client.create_table(bigquery.Table(f"{bigquery_dataset}.staging", schema=BQ_SCHEMA))
    job = client.load_table_from_file(
        io.BytesIO(b'{"message_id": "x", "extra": "e"}\n'),
        f"{bigquery_dataset}.staging",
        job_config=bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=[*BQ_SCHEMA, SF("extra", "STRING")],
            schema_update_options=[bigquery.SchemaUpdateOption.ALLOW_FIELD_ADDITION],
            write_disposition="WRITE_APPEND",
        ),
        size=None,
    )
    assert job.result().output_rows == 1
    assert "extra" not in [f.name for f in client.get_table(f"{bigquery_dataset}.staging").schema]
