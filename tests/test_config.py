"""Configuration is validated at start-up and fails loudly, naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from etl.config import ConfigError, load_settings


def test_defaults_are_sane(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.sinks == ["duckdb"] and s.role == "all"
    assert (s.kafka.raw_topic, s.kafka.normalized_topic, s.kafka.dlq_topic) == ("events.raw", "events.normalized", "events.dlq")
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
        ({"ETL_SINKS": "duckdb,posthog"}, "sink 'posthog' is enabled but posthog.api_key is not set"),
        ({"ETL_SINKS": "posthog", "POSTHOG_API_KEY": "  "}, "posthog.api_key is not set"),
        ({"ETL_SINKS": "rudderstack", "RUDDERSTACK_WRITE_KEY": "k"}, "rudderstack.data_plane_url is not set"),
        ({"ETL_SINKS": "snowflake", "SNOWFLAKE_ACCOUNT": "a", "SNOWFLAKE_USER": "u"}, "snowflake.password or snowflake.private_key_file"),
        ({"ETL_SINKS": "bigquery"}, "bigquery.project is not set"),
        ({"ETL_SINKS": "duckdb,kafka"}, "sinks: unknown sink 'kafka'"),
        ({"ETL_ROLE": "sink:posthog"}, "sink 'posthog' is enabled but posthog.api_key"),
        ({"ETL_ROLE": "reader"}, "role: role must be all, normalize or sink:"),
        ({"ETL_KAFKA__PARTITIONS": "0"}, "kafka.partitions: Input should be greater than or equal to 1  (env ETL_KAFKA__PARTITIONS)"),
        ({"ETL_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism, sasl_username, sasl_password"),
        ({"ETL_DELIVERY__FLUSH_INTERVAL": "soon"}, "delivery.flush_interval: Input should be a valid number"),
    ],
)
def test_bad_configuration_names_the_field(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in str(err.value)


def test_worker_refuses_to_start_with_bad_configuration() -> None:
    env = {"PATH": "/usr/bin:/bin", "ETL_SINKS": "duckdb,posthog"}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "posthog.api_key is not set" in proc.stderr
