"""Pytest fixtures for the warehouse emulators.

Import them into a conftest or a test module (pytest finds fixtures by name in the
module's globals)::

    from tests.emulators.fixtures import (  # noqa: F401
        bigquery_client, bigquery_dataset, bigquery_emulator,
        snowflake_conn_kwargs, snowflake_connection, snowflake_emulator,
    )

Session-scoped: one fakesnow server process and one bqemulator process per test
session.  Function-scoped helpers give every test its own Snowflake schema / BigQuery
dataset so tests never see each other's tables.  An emulator that cannot start FAILS
the tests that use it with the reason (never skips).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .bigquery import BigQueryEmulator, BigQueryEmulatorError
from .snowflake import FakeSnowflakeServer, FakeSnowflakeStartError

__all__ = [
    "SNOWFLAKE_TEST_DATABASE",
    "bigquery_client",
    "bigquery_dataset",
    "bigquery_emulator",
    "snowflake_conn_kwargs",
    "snowflake_connection",
    "snowflake_emulator",
]

SNOWFLAKE_TEST_DATABASE = "ETL_TEST"


@pytest.fixture(scope="session")
def snowflake_emulator() -> Iterator[FakeSnowflakeServer]:
    """A fakesnow server in its own process (fresh, empty catalog), for the whole session."""
    server = FakeSnowflakeServer(mode="process")
    try:
        server.start()
    except FakeSnowflakeStartError as exc:
        server.stop()
        pytest.fail(f"cannot start the fakesnow server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def snowflake_conn_kwargs(snowflake_emulator: FakeSnowflakeServer) -> dict[str, Any]:
    """``snowflake.connector.connect(**snowflake_conn_kwargs, database=..., schema=...)``."""
    return snowflake_emulator.connection_kwargs()


@pytest.fixture
def snowflake_connection(snowflake_emulator: FakeSnowflakeServer) -> Iterator[Any]:
    """A real ``SnowflakeConnection`` (pyformat) whose current schema is unique to the test.

    Database ``ETL_TEST``; the schema name is ``conn.schema``.  Open more connections to
    the same schema with ``snowflake_emulator.connect(database=conn.database, schema=conn.schema)``.
    """
    schema = f"T_{uuid.uuid4().hex[:10].upper()}"
    conn = snowflake_emulator.connect(database=SNOWFLAKE_TEST_DATABASE, schema=schema)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def bigquery_emulator() -> Iterator[BigQueryEmulator]:
    """bqemulator (project ``local``) for the whole session; builds its venv on first use."""
    emulator = BigQueryEmulator(project="local")
    try:
        emulator.start()
    except BigQueryEmulatorError as exc:
        emulator.stop()
        pytest.fail(f"cannot start the BigQuery emulator: {exc}", pytrace=False)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def bigquery_client(bigquery_emulator: BigQueryEmulator) -> Any:
    """A real ``google.cloud.bigquery.Client`` for the emulator (project ``local``)."""
    return bigquery_emulator.client


@pytest.fixture
def bigquery_dataset(bigquery_client: Any) -> Iterator[str]:
    """A fresh dataset for the test; yields its fully qualified id ``local.t_<hex>``."""
    dataset_id = f"{bigquery_client.project}.t_{uuid.uuid4().hex[:10]}"
    bigquery_client.create_dataset(dataset_id)
    try:
        yield dataset_id
    finally:
        bigquery_client.delete_dataset(dataset_id, delete_contents=True, not_found_ok=True)
