"""The deployment files agree with their schemas and with the code.

No Docker engine or cluster runs here, so these validate docker-compose.yml
(compose-spec schema), deploy/k8s (Kubernetes OpenAPI via kubernetes-validate,
KEDA CRD schemas), the Dockerfile, .env.example and the Grafana dashboard
against the settings model, the CLI and the metrics registry; each validator
is also shown to catch a seeded inconsistency.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from etl.config import ConfigError
from sinks.settings import Settings
from tests import deploy_checks as checks
from tests.deploy_checks import KNOWN_SINKS

ROOT = checks.ROOT
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = checks.DEPLOY / "Dockerfile"
K8S = checks.DEPLOY / "k8s"
DASHBOARD = checks.DEPLOY / "grafana" / "dashboards" / "analytics-etl.json"
PROVISIONING = checks.DEPLOY / "grafana" / "provisioning"
ENV_EXAMPLE = ROOT / ".env.example"


def seeded_copy(tmp_path: Path, source: Path, old: str, new: str, count: int = 1) -> Path:
    text = source.read_text()
    assert text.count(old) >= count, f"seed anchor {old!r} not found in {source.name}"
    target = tmp_path / source.name
    target.write_text(text.replace(old, new, count))
    return target


def seeded_k8s(tmp_path: Path, file: str, old: str, new: str) -> Path:
    directory = tmp_path / "k8s"
    shutil.copytree(K8S, directory)
    seeded_copy(directory, K8S / file, old, new)
    return directory


# ---------------------------------------------------------------------------
# docker-compose.yml


def test_compose_is_consistent() -> None:
    assert checks.check_compose(COMPOSE) == []


def test_compose_default_profile_runs_normalize_and_duckdb_on_kafka() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    default = sorted(name for name, svc in services.items() if not svc.get("profiles"))
    assert default == ["etl-normalize", "etl-sink-duckdb", "kafka", "kafka-init"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["prometheus"]["profiles"] == ["observability"]
    assert services["grafana"]["profiles"] == ["observability"]
    for sink in KNOWN_SINKS:
        svc = services[f"etl-sink-{sink}"]
        assert svc["environment"]["ETL_ROLE"] == f"sink:{sink}"
        assert svc["command"] == ["worker"]
        if sink != "duckdb":
            assert sink in svc["profiles"]
    # the warehouse lives on a named volume
    assert "warehouse:/var/lib/etl/warehouse" in services["etl-sink-duckdb"]["volumes"]
    assert (
        services["etl-sink-duckdb"]["environment"]["ETL_DUCKDB__PATH"]
        == "/var/lib/etl/warehouse/warehouse.duckdb"
    )


def test_compose_commands_exist_in_cli() -> None:
    commands = checks.cli_commands()
    assert {"worker", "demo", "query"} <= commands


def test_compose_rejects_unknown_setting(tmp_path: Path) -> None:
    bad = seeded_copy(
        tmp_path,
        COMPOSE,
        "      ETL_ROLE: normalize\n",
        "      ETL_ROLE: normalize\n      ETL_KAFKA__BOOTSTRAP_SERVER: kafka:9092\n",
    )
    assert checks.check_compose(bad) == [
        "compose service etl-normalize: "
        "ETL_KAFKA__BOOTSTRAP_SERVER is not a setting of sinks.settings.Settings"
    ]


def test_compose_rejects_unknown_vendor_variable(tmp_path: Path) -> None:
    bad = seeded_copy(
        tmp_path,
        COMPOSE,
        "      POSTHOG_API_KEY: ${POSTHOG_API_KEY:-}\n",
        "      POSTHOG_KEY: ${POSTHOG_API_KEY:-}\n",
    )
    # the misspelt key also leaves the sink without its API key: start-up would fail, naming it
    assert checks.check_compose(bad) == [
        "compose service etl-sink-posthog: "
        "POSTHOG_KEY is neither an ETL_ setting nor a vendor variable of the settings",
        "compose service etl-sink-posthog: settings do not load: invalid configuration:\n"
        "  settings: sink 'posthog' is enabled but not configured; set ETL_POSTHOG__API_KEY"
        " (or POSTHOG_API_KEY, POSTHOG_PROJECT_API_KEY)",
        "compose: no worker service for sink posthog",
    ]


def test_compose_rejects_schema_violation(tmp_path: Path) -> None:
    bad = seeded_copy(
        tmp_path,
        COMPOSE,
        "  etl-normalize:\n    <<: *etl-worker\n    environment:",
        "  etl-normalize:\n    <<: *etl-worker\n    enviroment:",
    )
    problems = checks.check_compose(bad)
    assert problems == [
        "compose schema: services/etl-normalize: 'enviroment' does not match any of the regexes: "
        "'^x-'",
        # without its environment the service falls back to the image's defaults
        "compose service etl-normalize: ETL_ROLE must name one role (normalize or sink:<name>), "
        "not 'all'",
        "compose: no normalize worker service",
    ]


def test_compose_rejects_unknown_command(tmp_path: Path) -> None:
    bad = seeded_copy(tmp_path, COMPOSE, '  command: ["worker"]', '  command: ["wroker"]')
    problems = checks.check_compose(bad)
    assert (
        "compose service etl-normalize: command 'wroker' is not an etl command (etl --help)"
        in problems
    )
    assert len(problems) == len(checks.KNOWN_SINKS) + 1


def test_compose_rejects_healthcheck_port_mismatch(tmp_path: Path) -> None:
    bad = seeded_copy(
        tmp_path,
        COMPOSE,
        "      ETL_ROLE: normalize\n",
        '      ETL_ROLE: normalize\n      ETL_WEB_PORT: "7070"\n',
    )
    assert checks.check_compose(bad) == [
        "compose service etl-normalize: healthcheck probes port 6066, but ETL_WEB_PORT is 7070",
        "prometheus.yml: scrapes etl-normalize on port 6066, but ETL_WEB_PORT is 7070",
    ]


def test_compose_rejects_volume_mismatch(tmp_path: Path) -> None:
    bad = seeded_copy(
        tmp_path,
        COMPOSE,
        "      - warehouse:/var/lib/etl/warehouse",
        "      - warehouses:/var/lib/etl/warehouse",
    )
    assert checks.check_compose(bad) == [
        "compose service etl-sink-duckdb: volume warehouses is not declared under volumes:",
        "compose: volume warehouse is declared but no service uses it",
    ]


def test_compose_rejects_interpolation_default_drift(tmp_path: Path) -> None:
    bad = seeded_copy(
        tmp_path,
        COMPOSE,
        "${ETL_KAFKA__RAW_TOPIC:-events.raw}",
        "${ETL_KAFKA__RAW_TOPIC:-raw}",
        count=2,
    )
    problems = checks.check_compose(bad)
    assert problems == ["compose: ${ETL_KAFKA__RAW_TOPIC:-raw} differs from the settings default"]


def test_compose_rejects_role_without_its_sink(tmp_path: Path) -> None:
    bad = seeded_copy(tmp_path, COMPOSE, "      ETL_SINKS: rudderstack\n", "")
    assert checks.check_compose(bad) == [
        "compose service etl-sink-rudderstack: role sink:rudderstack but ETL_SINKS=duckdb "
        "(start-up checks skip it)"
    ]


# ---------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_is_consistent() -> None:
    assert checks.check_dockerfile(DOCKERFILE) == []
    env = checks.dockerfile_env(DOCKERFILE)
    assert env["ETL_WEB_PORT"] == str(Settings.model_fields["web_port"].default)
    assert env["ETL_DUCKDB__PATH"] == "/var/lib/etl/warehouse/warehouse.duckdb"


def test_dockerfile_rejects_root_secret_and_port_drift(tmp_path: Path) -> None:
    bad = seeded_copy(tmp_path, DOCKERFILE, "USER ${ETL_UID}:${ETL_UID}", "USER root")
    assert checks.check_dockerfile(bad) == ["Dockerfile: runtime USER is root (root)"]
    bad = seeded_copy(
        tmp_path,
        DOCKERFILE,
        "    ETL_WEB_PORT=6066",
        "    ETL_WEB_PORT=7000 \\\n    POSTHOG_API_KEY=phc_x",
    )
    assert checks.check_dockerfile(bad) == [
        "Dockerfile: POSTHOG_API_KEY looks like a secret; pass it at run time",
        "Dockerfile: EXPOSE ['6066'] does not include ETL_WEB_PORT=7000",
    ]


# ---------------------------------------------------------------------------
# .env.example


def _env_example_module():
    spec = importlib.util.spec_from_file_location("env_example", checks.DEPLOY / "env_example.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_env_example_is_generated_from_the_settings_model() -> None:
    assert ENV_EXAMPLE.read_text() == _env_example_module().render(), (
        "regenerate: python deploy/env_example.py > .env.example"
    )
    assert checks.check_env_example(ENV_EXAMPLE) == []


def test_env_example_rejects_missing_and_wrong_defaults(tmp_path: Path) -> None:
    bad = seeded_copy(tmp_path, ENV_EXAMPLE, "# ETL_DELIVERY__RETRY_MAX=30.0\n", "")
    assert checks.check_env_example(bad) == [
        ".env.example: setting delivery.retry_max (ETL_DELIVERY__RETRY_MAX) is missing"
    ]
    bad = seeded_copy(
        tmp_path, ENV_EXAMPLE, "# ETL_KAFKA__PARTITIONS=4\n", "# ETL_KAFKA__PARTITIONS=6\n"
    )
    assert checks.check_env_example(bad) == [
        ".env.example: kafka.partitions=6 differs from the default 4"
    ]
    bad = seeded_copy(tmp_path, ENV_EXAMPLE, "# SNOWFLAKE_ROLE=\n", "")
    assert checks.check_env_example(bad) == [
        ".env.example: vendor variable SNOWFLAKE_ROLE is missing"
    ]


# ---------------------------------------------------------------------------
# Kubernetes + KEDA


def test_k8s_manifests_are_valid_and_consistent() -> None:
    assert checks.check_k8s(K8S) == []


def test_k8s_scaled_objects_follow_consumer_groups() -> None:
    settings = checks.settings_from_env(
        yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    )
    scaled = {
        doc["metadata"]["name"]: doc
        for _, doc in checks.load_manifests(K8S)
        if doc["kind"] == "ScaledObject"
    }
    expected = {settings.normalize_group} | {
        settings.sink_group(s) for s in KNOWN_SINKS if s not in checks.SINGLE_WRITER_SINKS
    }
    assert set(scaled) == expected
    for name, doc in scaled.items():
        (trigger,) = doc["spec"]["triggers"]
        assert trigger["metadata"]["consumerGroup"] == name
        assert trigger["metadata"]["topic"] == (
            settings.kafka.raw_topic
            if name == settings.normalize_group
            else settings.kafka.normalized_topic
        )
        assert doc["spec"]["maxReplicaCount"] <= settings.kafka.partitions == 4


def test_k8s_secret_templates_fail_loudly_until_filled() -> None:
    docs = checks.load_manifests(K8S)
    config = next(d for _, d in docs if d["kind"] == "ConfigMap")["data"]
    secret = next(
        d for _, d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "etl-secrets"
    )["stringData"]
    env = {**config, **secret, "ETL_ROLE": "sink:posthog", "ETL_SINKS": "posthog"}
    with pytest.raises(
        ConfigError, match=r"sink 'posthog' is enabled but not configured; set ETL_POSTHOG__API_KEY"
    ):
        checks.settings_from_env(env)
    filled = checks.settings_from_env({**env, "POSTHOG_API_KEY": "phc_test"})
    assert filled.posthog.api_key.get_secret_value() == "phc_test"


def test_k8s_rejects_replicas_beyond_partitions(tmp_path: Path) -> None:
    bad = seeded_k8s(tmp_path, "sink-posthog.yaml", "maxReplicaCount: 4", "maxReplicaCount: 8")
    assert checks.check_k8s(bad) == [
        "ScaledObject etl-sink-posthog: maxReplicaCount 8 exceeds ETL_KAFKA__PARTITIONS=4"
    ]


def test_k8s_rejects_wrong_consumer_group(tmp_path: Path) -> None:
    bad = seeded_k8s(
        tmp_path, "normalize.yaml", "consumerGroup: etl-normalize", "consumerGroup: etl-normaliser"
    )
    assert checks.check_k8s(bad) == [
        "ScaledObject etl-normalize: consumerGroup etl-normaliser is not etl-normalize"
    ]


def test_k8s_rejects_schema_violations(tmp_path: Path) -> None:
    bad = seeded_k8s(
        tmp_path,
        "sink-rudderstack.yaml",
        "  revisionHistoryLimit: 5\n",
        "  revisionHistoryLimit: 5\n  replica: 2\n",
    )
    problems = checks.check_k8s(bad)
    assert len(problems) == 1 and problems[0].startswith(
        "sink-rudderstack.yaml Deployment/etl-sink-rudderstack: spec: "
        "Additional properties are not allowed ('replica' was unexpected)"
    )
    bad = seeded_k8s(
        tmp_path / "keda",
        "sink-snowflake.yaml",
        "  pollingInterval: 15\n",
        '  pollingInterval: "fifteen"\n',
    )
    assert checks.check_k8s(bad) == [
        "sink-snowflake.yaml ScaledObject/etl-sink-snowflake: spec/pollingInterval: "
        "'fifteen' is not of type 'integer'"
    ]


def test_k8s_rejects_unknown_env_and_secret_values(tmp_path: Path) -> None:
    bad = seeded_k8s(
        tmp_path,
        "configmap.yaml",
        '  ETL_LOG_LEVEL: "INFO"\n',
        '  ETL_LOG_LEVEL: "INFO"\n  ETL_LOGLEVEL: "DEBUG"\n',
    )
    assert checks.check_k8s(bad) == [
        f"Deployment {name}: ETL_LOGLEVEL is not a setting of sinks.settings.Settings"
        for name in (
            "etl-normalize",
            "etl-sink-bigquery",
            "etl-sink-duckdb",
            "etl-sink-posthog",
            "etl-sink-rudderstack",
            "etl-sink-snowflake",
        )
    ]
    bad = seeded_k8s(
        tmp_path / "secret", "secret.yaml", '  POSTHOG_API_KEY: ""', '  POSTHOG_API_KEY: "phc_real"'
    )
    assert checks.check_k8s(bad) == [
        "Secret etl-secrets: POSTHOG_API_KEY has a value; templates hold placeholders only"
    ]
    bad = seeded_k8s(
        tmp_path / "configmap",
        "configmap.yaml",
        '  ETL_LOG_LEVEL: "INFO"\n',
        '  ETL_LOG_LEVEL: "INFO"\n  ETL_KAFKA__SASL_PASSWORD: "x"\n',
    )
    assert checks.check_k8s(bad) == [
        "ConfigMap etl-config: ETL_KAFKA__SASL_PASSWORD is a secret; put it in the Secret"
    ]


def test_k8s_rejects_probe_on_wrong_port(tmp_path: Path) -> None:
    bad = seeded_k8s(tmp_path, "configmap.yaml", 'ETL_WEB_PORT: "6066"', 'ETL_WEB_PORT: "6070"')
    problems = checks.check_k8s(bad)
    assert "Deployment etl-normalize: livenessProbe port web is not ETL_WEB_PORT=6070" in problems
    assert "Deployment etl-normalize: readinessProbe port web is not ETL_WEB_PORT=6070" in problems
    assert "Deployment etl-normalize: prometheus.io/port 6066 is not ETL_WEB_PORT=6070" in problems


# ---------------------------------------------------------------------------
# Grafana


REQUIRED_FAMILIES = {
    "etl_events_in",
    "etl_events_out",
    "etl_dlq",
    "etl_batch_size",
    "etl_sink_write_seconds",
    "etl_sink_retries",
    "etl_sink_backpressure_seconds",
    "etl_sink_paused_since_seconds",
    "etl_sink_stopped",
    "etl_gated",
    "etl_consumer_lag",
    "etl_produce_retries",
}


def test_dashboard_queries_only_registered_series() -> None:
    assert checks.check_dashboard(DASHBOARD, PROVISIONING) == []
    queried = {name.removesuffix("_total") for name in checks.dashboard_metric_families(DASHBOARD)}
    assert REQUIRED_FAMILIES <= queried, REQUIRED_FAMILIES - queried


def test_dashboard_is_provisioned_in_compose() -> None:
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "analytics-etl.yml").read_text())[
        "providers"
    ][0]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert (
        json.loads(DASHBOARD.read_text())["templating"]["list"][0]["current"]["value"]
        == datasource["uid"]
    )


def test_dashboard_rejects_unknown_metric_label_and_datasource(tmp_path: Path) -> None:
    bad = seeded_copy(tmp_path, DASHBOARD, "rate(etl_dlq_total[", "rate(etl_dead_letters_total[")
    assert checks.check_dashboard(bad, PROVISIONING) == [
        "analytics-etl.json panel 'Dead letters per second, by reason': "
        "metric etl_dead_letters_total is not in streams/metrics.py",
        "analytics-etl.json panel 'Dead letters per second, by reason': "
        "groups by reason, which no metric in the expression has",
        "analytics-etl.json panel 'Dead letters per second, by reason': "
        "groups by stage, which no metric in the expression has",
    ]
    bad = seeded_copy(
        tmp_path,
        DASHBOARD,
        'etl_events_out_total{outcome=\\"delivered\\"}',
        'etl_events_out_total{result=\\"delivered\\"}',
    )
    assert checks.check_dashboard(bad, PROVISIONING) == [
        "analytics-etl.json panel 'Delivered per second, by sink': "
        "etl_events_out_total has no label result"
    ]
    bad = seeded_copy(tmp_path, DASHBOARD, '"value": "etl-prometheus"', '"value": "prom-main"')
    assert checks.check_dashboard(bad, PROVISIONING) == [
        "analytics-etl.json: datasource variable datasource defaults to 'prom-main', "
        "not a provisioned prometheus datasource"
    ]


# ---------------------------------------------------------------------------
# What the image installs


def test_image_installs_every_module_the_code_imports() -> None:
    # The image installs only pyproject's dependencies and the extras in ARG EXTRAS.
    assert checks.check_image_dependencies(DOCKERFILE) == []


def test_image_dependency_check_catches_a_dropped_extra(tmp_path: Path) -> None:
    bad = seeded_copy(
        tmp_path, DOCKERFILE, "ARG EXTRAS=posthog,rudderstack,", "ARG EXTRAS=rudderstack,"
    )
    problems = checks.check_image_dependencies(bad)
    assert [p for p in problems if " imports posthog," in p], problems


def test_reading_a_deploy_environment_leaves_this_process_environment_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The image's environment sets PATH (and the runtime variables) too; reading
    # it must not take this process's PATH away from the tests that run after.
    monkeypatch.setenv("ETL_LOG_LEVEL", "DEBUG")
    before = dict(os.environ)
    checks.settings_from_env({"PATH": "/opt/etl/bin:/usr/bin", "ETL_SINKS": "duckdb"})
    assert dict(os.environ) == before
