"""Configuration is validated at start-up and fails loudly, naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from etl.config import ConfigError
from sinks.settings import load_settings


def test_defaults_are_sane(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.sinks == ["duckdb"] and str(s.role) == "all"
    assert (s.kafka.raw_topic, s.kafka.normalized_topic, s.kafka.dlq_topic) == (
        "events.raw",
        "events.normalized",
        "events.dlq",
    )
    assert s.normalize_group == "etl-normalize" and s.sink_group("duckdb") == "etl-sink-duckdb"


def test_nested_env_and_vendor_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_SINKS", "duckdb, posthog,rudderstack")
    monkeypatch.setenv("POSTHOG_API_KEY", "phc_vendor")
    monkeypatch.setenv("POSTHOG_HOST", "http://vendor-host")
    monkeypatch.setenv("ETL_POSTHOG__HOST", "http://etl-host")  # ETL_ wins over the vendor name
    monkeypatch.setenv("RUDDERSTACK_WRITE_KEY", "wk")
    monkeypatch.setenv("RUDDERSTACK_DATA_PLANE_URL", "http://dp")
    monkeypatch.setenv("ETL_KAFKA__PARTITIONS", "12")
    s = load_settings()
    assert s.sinks == ["duckdb", "posthog", "rudderstack"]
    assert s.posthog.api_key.get_secret_value() == "phc_vendor"
    assert s.posthog.host == "http://etl-host"
    assert s.kafka.partitions == 12
    assert "phc_vendor" not in repr(s)  # secrets never print


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ETL_SINKS": "duckdb,posthog"},
            "sink 'posthog' is enabled but not configured; "
            "set ETL_POSTHOG__API_KEY (or POSTHOG_API_KEY, POSTHOG_PROJECT_API_KEY)",
        ),
        ({"ETL_SINKS": "posthog", "POSTHOG_API_KEY": "  "}, "set ETL_POSTHOG__API_KEY"),
        (
            {"ETL_SINKS": "rudderstack", "RUDDERSTACK_WRITE_KEY": "k"},
            "set ETL_RUDDERSTACK__DATA_PLANE_URL (or RUDDERSTACK_DATA_PLANE_URL)",
        ),
        (
            {"ETL_SINKS": "snowflake", "SNOWFLAKE_ACCOUNT": "a", "SNOWFLAKE_USER": "u"},
            "set ETL_SNOWFLAKE__PASSWORD (or SNOWFLAKE_PASSWORD) or "
            "ETL_SNOWFLAKE__PRIVATE_KEY_FILE (or SNOWFLAKE_PRIVATE_KEY_FILE)",
        ),
        ({"ETL_SINKS": "bigquery"}, "set ETL_BIGQUERY__PROJECT (or GOOGLE_CLOUD_PROJECT)"),
        (
            {"ETL_SINKS": "duckdb,kafka"},
            "unknown sink 'kafka'; choose from posthog, duckdb, rudderstack, snowflake, bigquery",
        ),
        ({"ETL_ROLE": "sink:posthog"}, "sink 'posthog' is enabled but not configured"),
        ({"ETL_ROLE": "reader"}, "role: role must be all, normalize or sink:<name>, got 'reader'"),
        (
            {"ETL_KAFKA__PARTITIONS": "0"},
            "kafka.partitions: Input should be greater than or equal to 1  "
            "(env ETL_KAFKA__PARTITIONS)",
        ),
        (
            {"ETL_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
            "needs sasl_mechanism, sasl_username, sasl_password",
        ),
        (
            {"ETL_DELIVERY__FLUSH_INTERVAL": "soon"},
            "delivery.flush_interval: Input should be a valid number",
        ),
    ],
)
def test_bad_configuration_names_the_field(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in str(err.value)


def test_every_missing_credential_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_SINKS", "duckdb,posthog,rudderstack,bigquery")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    for variable in (
        "POSTHOG_API_KEY",
        "RUDDERSTACK_WRITE_KEY",
        "RUDDERSTACK_DATA_PLANE_URL",
        "GOOGLE_CLOUD_PROJECT",
    ):
        assert variable in message


def test_worker_refuses_to_start_with_bad_configuration() -> None:
    env = {"PATH": "/usr/bin:/bin", "ETL_SINKS": "duckdb,posthog"}
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "sink 'posthog' is enabled but not configured; set ETL_POSTHOG__API_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr
