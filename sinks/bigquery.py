"""BigQuery warehouse sink (``google-cloud-bigquery``).

Same tables and views as the DuckDB reference (``sinks/duckdb.py``).  Each batch:

1. rows per table -> newline-delimited JSON -> a *resumable* load job
   (``load_table_from_file(..., size=None)``) into a per-worker staging table
   (``WRITE_TRUNCATE`` with the staging schema, so an evolved schema just
   replaces it);
2. ``MERGE`` staging into the target on ``message_id`` (``rejection_id`` for
   ``rejected_events``).

Never ``insertId`` deduplication: it is best effort on BigQuery and absent on
emulators; MERGE makes redelivery and replay idempotent.  Load jobs are free
and bulk (about 100k+ rows/s against the emulator; the MERGE adds ~0.1 s), and
unlike streaming inserts they leave no streaming buffer that MERGE cannot touch.

Tables are partitioned by ``DATE(timestamp)`` (``events`` clustered by
``event, workspace_id``; typed tables by ``workspace_id``).  New columns are
added with ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` *and* the table's
schema is updated through the API (the emulator keeps its catalog separately;
on BigQuery the second step is a no-op).
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from pydantic import Field

from sinks.base import BatchRejectedError, RetryableSinkError, SinkAuthError
from sinks.erasure import Binder, PeopleErasure
from sinks.schema import (
    ALIASES_COLUMNS,
    BOOLEAN,
    DISCARD_COLUMNS,
    EVENTS_COLUMNS,
    FLOAT,
    INTEGER,
    JSON,
    REJECTED_COLUMNS,
    STRING,
    STRING_ARRAY,
    TIMESTAMP,
    USERS_COLUMNS,
    Column,
    missing_columns,
)
from sinks.warehouse_sql import (
    LoadPolicySettings,
    MergingWarehouseSink,
    StagingNames,
    merge_statement,
    parse_timestamp,
)

if TYPE_CHECKING:
    from sinks.settings import Settings

log = logging.getLogger("etl.sinks.bigquery")


class BigQuerySettings(LoadPolicySettings):
    vendor_env: ClassVar[dict[str, str]] = {
        "GOOGLE_CLOUD_PROJECT": "project",
        "BIGQUERY_DATASET": "dataset",
        "BIGQUERY_LOCATION": "location",
    }
    required: ClassVar[tuple[str, ...]] = ("project",)

    project: str | None = Field(None, description="GCP project.")
    dataset: str = Field("analytics", description="Dataset.")
    location: str | None = Field(None, description="Dataset location (US, EU, a region).")
    api_endpoint: str | None = Field(
        None, description="Explicit endpoint; anonymous credentials are used with it (emulators)."
    )
    # 960 loads a day: each is a MERGE per table, and a table takes 1,500 modifications a day.
    min_load_interval: float = Field(
        90.0,
        ge=0,
        description="Fewest seconds between two loads of this worker (caps loads per day).",
    )


#: Loads per staging table before the next one (far below 1,500 modifications a day).
STAGING_LOADS = 500
#: A staging table left by a crashed worker is deleted by BigQuery after this.
STAGING_EXPIRATION = timedelta(hours=6)

BIGQUERY_TYPES = {
    STRING: "STRING",
    INTEGER: "INT64",
    FLOAT: "FLOAT64",
    BOOLEAN: "BOOL",
    TIMESTAMP: "TIMESTAMP",
    JSON: "JSON",
    STRING_ARRAY: "ARRAY<STRING>",
}
# Schema fields use the API's canonical names (what get_table returns).
FIELD_TYPES = {
    STRING: "STRING",
    INTEGER: "INTEGER",
    FLOAT: "FLOAT",
    BOOLEAN: "BOOLEAN",
    TIMESTAMP: "TIMESTAMP",
    JSON: "JSON",
}
# SchemaField.field_type -> logical type (for evolved columns read back).
REVERSE_TYPES = {
    "STRING": STRING,
    "INTEGER": INTEGER,
    "INT64": INTEGER,
    "FLOAT": FLOAT,
    "FLOAT64": FLOAT,
    "BOOLEAN": BOOLEAN,
    "BOOL": BOOLEAN,
    "TIMESTAMP": TIMESTAMP,
    "JSON": JSON,
}


def schema_field(col: Column) -> Any:
    from google.cloud import bigquery

    if col.type == STRING_ARRAY:
        return bigquery.SchemaField(
            col.name,
            "STRING",
            mode="REPEATED",
            description=col.description or None,  # type: ignore[arg-type]
        )
    return bigquery.SchemaField(
        col.name,
        FIELD_TYPES[col.type],
        mode="NULLABLE",
        description=col.description or None,  # type: ignore[arg-type]
    )


def logical_type(field: Any) -> str:
    if field.mode == "REPEATED":
        return STRING_ARRAY
    return REVERSE_TYPES.get(field.field_type.upper(), JSON)


def _quote(name: str) -> str:
    return f"`{name}`"


def _windowed(column: str, by: str) -> str:
    return ",\n".join(
        f"PERCENTILE_CONT({column}, {q}) OVER (PARTITION BY {by}) AS p{p}"
        for p, q in (("50", "0.5"), ("95", "0.95"), ("99", "0.99"))
    )


def _picked(prefix: str) -> str:
    return ",\n".join(f"ROUND(MAX(p{p}), 1) AS p{p}_{prefix}" for p in ("50", "95", "99"))


_RAG_GROUP = "DATE(`timestamp`), workspace_id, vector_db_used"


def view_sql(table: Any) -> dict[str, str]:
    """The DuckDB views (sinks/duckdb.py) in BigQuery SQL; ``table(name)`` qualifies a name.

    PERCENTILE_CONT is analytic-only in BigQuery: percentiles come from a window
    over the group's key in a subquery, then one value per group (MAX of a
    constant).  Exact, like DuckDB's quantile_cont and Snowflake's PERCENTILE_CONT.
    ``DATE(timestamp)`` is the UTC day.
    """
    return {
        "flow_success_daily": f"""
            SELECT day, workspace_id,
                   COUNT(*) AS flows,
                   COUNTIF(success) AS succeeded,
                   COUNTIF(success IS NOT NULL) AS with_outcome,
                   ROUND(COUNTIF(success) / NULLIF(COUNTIF(success IS NOT NULL), 0), 4)
                       AS success_rate,
                   {_picked("time_ms")}
            FROM (SELECT DATE(`timestamp`) AS day, workspace_id, success,
                         {_windowed("time_ms", "DATE(`timestamp`), workspace_id")}
                  FROM {table("flow_executed")})
            GROUP BY day, workspace_id""",
        "tool_latency": f"""
            SELECT day, workspace_id, tool_type,
                   COUNT(*) AS calls,
                   {_picked("latency_ms")},
                   ROUND(COUNTIF(status IS NOT NULL AND status NOT IN ('success', 'ok'))
                       / COUNT(*), 4) AS error_rate
            FROM (SELECT DATE(`timestamp`) AS day, workspace_id, tool_type, status,
                         {_windowed("latency_ms", "DATE(`timestamp`), workspace_id, tool_type")}
                  FROM {table("tool_used")})
            GROUP BY day, workspace_id, tool_type""",
        "llm_cost_daily": f"""
            SELECT DATE(`timestamp`) AS day,
                   ai_model AS model,
                   ai_provider AS provider,
                   workspace_id,
                   COUNT(*) AS generations,
                   SUM(ai_input_tokens) AS input_tokens,
                   SUM(ai_output_tokens) AS output_tokens,
                   ROUND(SUM(ai_total_cost_usd), 6) AS cost_usd
            FROM {table("ai_generation")}
            GROUP BY day, model, provider, workspace_id""",
        "blocked_prompt_rate": f"""
            SELECT DATE(`timestamp`) AS day, workspace_id,
                   COUNTIF(event = 'prompt_blocked') AS blocked_prompts,
                   COUNTIF(event = 'flow_executed') AS flow_runs,
                   COUNT(*) AS events,
                   ROUND(COUNTIF(event = 'prompt_blocked')
                       / NULLIF(COUNTIF(event IN ('prompt_blocked', 'flow_executed')), 0), 4)
                       AS blocked_rate
            FROM {table("events")} WHERE type = 'track'
            GROUP BY day, workspace_id""",
        "rag_latency": f"""
            SELECT day, workspace_id, vector_db,
                   COUNT(*) AS queries,
                   {_picked("latency_ms")},
                   ROUND(AVG(sources_found), 2) AS avg_sources_found
            FROM (SELECT DATE(`timestamp`) AS day, workspace_id,
                         vector_db_used AS vector_db, sources_found,
                         {_windowed("latency_ms", _RAG_GROUP)}
                  FROM {table("rag_query_triggered")})
            GROUP BY day, workspace_id, vector_db""",
    }


def layout_view_sql(table: Any) -> dict[str, str]:
    """RudderStack's per-call tables as views over ``events``."""

    def view(kind: str, extra: str = "") -> str:
        return f"""
            SELECT message_id AS id, message_id, anonymous_id, user_id, distinct_id,
                   workspace_id, DATE(`timestamp`) AS day,
                   `timestamp`, original_timestamp, sent_at, received_at,
                   loaded_at AS uuid_ts, {extra}properties, context
            FROM {table("events")} WHERE type = '{kind}'"""

    return {
        "tracks": view("track", "event, event AS event_text, "),
        "identifies": view("identify", "JSON_QUERY(context, '$.traits') AS traits, "),
        "pages": view("page", "event AS name, "),
        "screens": view("screen", "event AS name, "),
        "groups": view("group", "workspace_id AS group_id, "),
    }


def _cell(col: Column, value: Any) -> Any:
    if col.type == STRING_ARRAY:
        return value or []  # REPEATED fields cannot be NULL
    if value is None:
        return None
    if col.type == TIMESTAMP:
        return parse_timestamp(value).isoformat(timespec="microseconds") + "Z"  # type: ignore[union-attr]
    return value


def ndjson(columns: tuple[Column, ...], rows: list[dict[str, Any]]) -> bytes:
    return (
        b"\n".join(
            orjson.dumps({c.name: _cell(c, row.get(c.name)) for c in columns}) for row in rows
        )
        + b"\n"
    )


class BigQuerySink(PeopleErasure, MergingWarehouseSink):
    name = "bigquery"
    identifier_limit = 300

    def __init__(self, settings: Settings, client: Any = None) -> None:
        super().__init__(settings)
        self._client = client
        self._owns_client = client is None
        self._token = uuid.uuid4().hex[:8]
        self._staging_tables: dict[str, tuple[tuple[str, str], ...]] = {}
        self._names = StagingNames("_etl_stg_", self._token, STAGING_LOADS)
        self._initialised = False

    # ------------------------------------------------------------ connection
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        from google.cloud import bigquery

        s = self.settings.bigquery
        if s.api_endpoint:
            from google.api_core.client_options import ClientOptions
            from google.auth.credentials import AnonymousCredentials

            return bigquery.Client(
                project=s.project,
                location=s.location,
                credentials=AnonymousCredentials(),
                client_options=ClientOptions(api_endpoint=s.api_endpoint),
            )
        # Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity...).
        return bigquery.Client(project=s.project, location=s.location)

    @property
    def dataset_id(self) -> str:
        dataset = self.settings.bigquery.dataset
        return dataset if "." in dataset else f"{self.client.project}.{dataset}"

    def table_id(self, table: str) -> str:
        return f"{self.dataset_id}.{table}"

    def qualified(self, table: str) -> str:
        return f"`{self.table_id(table)}`"

    def open(self) -> None:
        self._guard(self._ensure)

    def close(self) -> None:
        if self._client is None:
            return
        for staging in list(self._staging_tables):
            try:
                self._client.delete_table(self.table_id(staging), not_found_ok=True)
            except Exception as exc:  # best effort; the next start reuses/replaces it anyway
                log.warning("could not drop staging table %s: %s", staging, exc)
        self._staging_tables.clear()
        self._names.current.clear()
        if self._owns_client:
            self._client.close()
            self._client = None
        self._initialised = False

    def _ensure(self) -> None:
        if self._initialised:
            return
        from google.cloud import bigquery

        dataset = bigquery.Dataset(self.dataset_id)
        if self.settings.bigquery.location:
            dataset.location = self.settings.bigquery.location
        self.client.create_dataset(dataset, exists_ok=True)
        self._create_table(
            "events", EVENTS_COLUMNS, partition="timestamp", cluster=["event", "workspace_id"]
        )
        have = {f.name for f in self.client.get_table(self.table_id("events")).schema}
        missing = missing_columns(have, EVENTS_COLUMNS)
        if missing:
            self._add_columns("events", missing)
        for table in self.schema.tables.values():
            self._create_table(
                table.name, table.columns, partition="timestamp", cluster=["workspace_id"]
            )
        self._create_table(
            "rejected_events", REJECTED_COLUMNS, partition="rejected_at", cluster=["reason"]
        )
        self._create_table(
            "schema_discards", DISCARD_COLUMNS, partition="discarded_at", cluster=["table_name"]
        )
        # Partitioned: partitioned tables have their own, higher daily modification quota.
        self._create_table(
            "users", USERS_COLUMNS, partition="first_identified_at", cluster=["user_id"]
        )
        self._create_table("aliases", ALIASES_COLUMNS, partition="timestamp", cluster=["user_id"])
        views = view_sql(self.qualified) | layout_view_sql(self.qualified)
        for name, sql in views.items():
            self._query(f"CREATE OR REPLACE VIEW {self.qualified(name)} AS {sql}")
        self._load_columns()
        self._sweep_staging()
        self._initialised = True

    def _create_table(
        self, name: str, columns: tuple[Column, ...], *, partition: str | None, cluster: list[str]
    ) -> None:
        # client.create_table, not DDL: it keeps JSON types and partitioning on the emulator too.
        from google.cloud import bigquery

        table = bigquery.Table(self.table_id(name), schema=[schema_field(c) for c in columns])
        if partition:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=partition
            )
        table.clustering_fields = cluster
        self.client.create_table(table, exists_ok=True)

    def _load_columns(self) -> None:
        for name, table in self.schema.tables.items():
            declared = {c.name: c.type for c in table.columns}
            fields = self.client.get_table(self.table_id(name)).schema
            self.schema.load_existing(
                name, {f.name: declared.get(f.name) or logical_type(f) for f in fields}
            )

    def _query(self, sql: str) -> Any:
        job = self.client.query(sql)
        job.result()
        return job

    def _guard(self, fn: Any, *args: Any) -> Any:
        """Map Google API errors to the runtime's vocabulary."""
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        try:
            return fn(*args)
        except (gexc.Unauthorized, auth_exc.DefaultCredentialsError, auth_exc.RefreshError) as exc:
            raise SinkAuthError(f"bigquery refused the credentials: {exc}") from None
        except gexc.Forbidden as exc:
            if _is_rate_limit(exc):
                raise RetryableSinkError(f"bigquery rate limit: {exc}", retry_after=2.0) from exc
            raise SinkAuthError(f"bigquery access denied: {exc}") from None
        except (
            gexc.TooManyRequests,
            gexc.ServerError,
            gexc.RetryError,
            ConnectionError,
            TimeoutError,
        ) as exc:
            raise RetryableSinkError(f"bigquery unavailable: {exc}", retry_after=1.0) from exc
        except gexc.BadRequest as exc:
            if "serialize access" in str(exc) or "concurrent" in str(exc).lower():
                raise RetryableSinkError(
                    f"bigquery concurrent update: {exc}", retry_after=1.0
                ) from exc
            raise
        except Exception as exc:
            import requests

            if isinstance(exc, requests.exceptions.RequestException):
                raise RetryableSinkError(f"bigquery unreachable: {exc}", retry_after=1.0) from exc
            raise

    # ----------------------------------------------------------------- write
    def _ready(self) -> None:
        self._ensure()

    def _add_columns(self, table: str, columns: list[Column]) -> None:
        for col in columns:  # one ADD COLUMN per statement (the emulator's limit)
            self._query(
                f"ALTER TABLE {self.qualified(table)} ADD COLUMN IF NOT EXISTS "
                f"{_quote(col.name)} {BIGQUERY_TYPES[col.type]}"
            )
            log.info(
                "schema evolution: added column %s.%s %s", table, col.name, BIGQUERY_TYPES[col.type]
            )
        current = self.client.get_table(self.table_id(table))
        known = {f.name for f in current.schema}
        missing = [schema_field(c) for c in columns if c.name not in known]
        if missing:
            current.schema = list(current.schema) + missing
            self.client.update_table(current, ["schema"])

    def _staging_name(self, table: str) -> str:
        """This load's staging table; the previous one is deleted when the name moves on.

        Every load job counts against its staging table's 1,500 modifications a
        day; a new table every ``STAGING_LOADS`` loads (and every hour) keeps each
        one far below that at any flush policy.
        """
        name, previous = self._names.name(table, time.time())
        if previous is not None and self._staging_tables.pop(previous, None) is not None:
            self.client.delete_table(self.table_id(previous), not_found_ok=True)
        return name

    def _sweep_staging(self) -> None:
        """Delete staging tables that crashed workers left (their hour is past the bound)."""
        now, bound = time.time(), self.settings.bigquery.staging_max_age_hours
        for item in self.client.list_tables(self.dataset_id):
            if self._names.stale(item.table_id, now, bound):
                self.client.delete_table(self.table_id(item.table_id), not_found_ok=True)
                log.info("dropped stale staging table %s", item.table_id)

    def _create_staging(self, staging: str, columns: tuple[Column, ...]) -> None:
        """Staging tables expire on their own: a SIGKILLed worker leaves nothing for long."""
        from google.cloud import bigquery

        table = bigquery.Table(self.table_id(staging), schema=[schema_field(c) for c in columns])
        table.expires = datetime.now(UTC) + STAGING_EXPIRATION
        self.client.create_table(table, exists_ok=True)

    def _select(
        self, table: str, columns: tuple[Column, ...], key: str, values: list[str]
    ) -> list[dict[str, Any]]:
        from google.cloud import bigquery

        names = [c.name for c in columns]
        select = ", ".join(
            f"TO_JSON_STRING({_quote(n)}) AS {_quote(n)}" if c.type == JSON else _quote(n)
            for n, c in zip(names, columns, strict=True)
        )
        config = bigquery.QueryJobConfig(
            query_parameters=[bigquery.ArrayQueryParameter("keys", "STRING", values)]
        )
        job = self.client.query(
            f"SELECT {select} FROM {self.qualified(table)} WHERE {_quote(key)} IN UNNEST(@keys)",
            job_config=config,
        )
        return [dict(zip(names, row.values(), strict=True)) for row in job.result()]

    def _merge(
        self,
        table: str,
        columns: tuple[Column, ...],
        rows: list[dict[str, Any]],
        keys: tuple[str, ...],
        within: tuple[str, int, int] | None = None,
    ) -> None:
        if not rows:
            return
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        staging = self._staging_name(table)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=[schema_field(c) for c in columns],
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        )
        signature = tuple((c.name, c.type) for c in columns)
        if self._staging_tables.get(staging, signature) != signature:
            # The emulator keeps an existing table's schema on WRITE_TRUNCATE (BigQuery replaces
            # it): after schema evolution, start the staging table afresh.
            self.client.delete_table(self.table_id(staging), not_found_ok=True)
            self._staging_tables.pop(staging, None)
        if staging not in self._staging_tables:
            self._create_staging(staging, columns)
        self._staging_tables[staging] = signature
        self._names.count_load(table)
        # size=None: a resumable upload (emulators refuse multipart; resumable scales to GBs).
        job = self.client.load_table_from_file(
            io.BytesIO(ndjson(columns, rows)), self.table_id(staging), size=None, job_config=config
        )
        try:
            job.result()
        except gexc.BadRequest as exc:
            # A value the load refused without naming the row: let the runtime bisect.
            raise BatchRejectedError(f"bigquery load into {table} refused: {exc}") from exc
        self._query(
            merge_statement(
                self.qualified(table),
                self.qualified(staging),
                [c.name for c in columns],
                keys,
                quote=_quote,
                within=within,
            )
        )

    # -- erasure hooks (sinks.erasure) ----------------------------------------
    def _erase_binder(self) -> Binder:
        return Binder(lambda name: f"@{name}")

    def _erase_rows(self, sql: str, binder: Binder) -> list[tuple[Any, ...]]:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(name, "STRING", value)
                for name, value in binder.params.items()
            ]
        )
        job = self.client.query(sql, job_config=config)
        return [tuple(row.values()) for row in job.result()]

    def _erase_table(self, table: str) -> str:
        return self.qualified(table)

    def _erase_column(self, column: str) -> str:
        return _quote(column)

    def _erase_contains(self, column: str, needle: str) -> str:
        return f"STRPOS({column}, {needle}) > 0"

    def _erase_existing_columns(self, table: str) -> list[str]:
        from google.api_core import exceptions as gexc

        try:
            return [f.name.lower() for f in self.client.get_table(self.table_id(table)).schema]
        except gexc.NotFound:
            return []


def _is_rate_limit(exc: Any) -> bool:
    reasons = {e.get("reason") for e in (getattr(exc, "errors", None) or []) if isinstance(e, dict)}
    return bool(reasons & {"rateLimitExceeded", "quotaExceeded", "backendError"})


SINK = BigQuerySink
SETTINGS = BigQuerySettings
