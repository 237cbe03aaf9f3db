"""Runtime configuration.

Every setting is read from the environment with the prefix ``ETL_`` (nested
sections use ``__``, e.g. ``ETL_KAFKA__BOOTSTRAP_SERVERS``).  The vendors' own
variable names (``POSTHOG_API_KEY``, ``SNOWFLAKE_ACCOUNT``, ...) are honoured
too, at lower priority than the ``ETL_`` form.  Settings are validated once at
start-up; a bad value fails with the offending field named.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

KNOWN_SINKS = ("duckdb", "posthog", "rudderstack", "snowflake", "bigquery")


def _split_csv(value: Any) -> Any:
    """Accept ``a,b`` as well as a JSON/py list for list-valued settings."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            import orjson

            return orjson.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of the Kafka brokers."
    )
    raw_topic: str = Field("events.raw", description="Topic the platform produces raw events to.")
    normalized_topic: str = Field("events.normalized", description="Topic of unified events.")
    dlq_topic: str = Field("events.dlq", description="Dead-letter topic (original bytes + reason).")
    partitions: int = Field(4, ge=1, description="Partitions used when this job creates topics.")
    replication_factor: int = Field(1, ge=1, description="Replication factor for created topics.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (MSK, Confluent Cloud, Redpanda Cloud)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="PLAIN (Confluent Cloud), SCRAM-SHA-256/512 (MSK, Redpanda)."
    )
    sasl_username: str | None = Field(None, description="SASL user (Confluent: the API key).")
    sasl_password: SecretStr | None = Field(None, description="SASL password (Confluent: the API secret). Never logged.")
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    group_prefix: str = Field("etl", description="Consumer groups are <prefix>-normalize and <prefix>-sink-<name>.")
    session_timeout: float = Field(10.0, gt=0, description="Seconds before the group evicts a silent worker (then rebalances).")
    heartbeat_interval: float = Field(1.0, gt=0, description="Seconds between consumer heartbeats.")
    rebalance_timeout: float = Field(10.0, gt=0, description="Seconds members get to rejoin during a rebalance.")
    commit_interval: float = Field(
        1.0, gt=0, description="Seconds between offset commits (of work already durable downstream)."
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> "KafkaSettings":
        if self.security_protocol.startswith("SASL"):
            missing = [f for f in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"security_protocol={self.security_protocol} needs {', '.join(missing)}")
        return self

    @property
    def hosts(self) -> list[str]:
        return [h.strip() for h in self.bootstrap_servers.split(",") if h.strip()]


class NormalizeSettings(BaseModel):
    max_message_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Raw Kafka messages larger than this are rejected (payload_too_large)."
    )
    max_event_bytes: int = Field(
        1024 * 1024, ge=1024, description="A single event larger than this is rejected (payload_too_large)."
    )
    max_string_length: int = Field(
        65536, ge=64, description="Longer string values are truncated and marked in context.etl.truncated."
    )
    max_depth: int = Field(32, ge=2, description="Deeper nesting in properties/context is rejected (too_deeply_nested).")
    envelope_size: int = Field(
        500,
        ge=1,
        description="Unified events per Kafka message on the normalized topic (1 = one event per message, keyed by distinct_id).",
    )
    dlq_raw_max_bytes: int = Field(
        256 * 1024, ge=1024, description="Original bytes kept in a dead letter; longer payloads are cut (size and sha256 kept)."
    )


class DeliverySettings(BaseModel):
    batch_max_events: int = Field(
        10000, ge=1, description="Events a delivering agent gathers per batch (a sink may split further by its own limits)."
    )
    flush_interval: float = Field(0.5, gt=0, description="Seconds a delivering agent waits to fill a batch.")
    retry_initial: float = Field(0.2, gt=0, description="First retry back-off, seconds.")
    retry_max: float = Field(30.0, gt=0, description="Cap of the exponential back-off, seconds.")
    unexpected_error_attempts: int = Field(
        5, ge=1, description="Attempts on an unexplained sink error before the batch is bisected to isolate bad events."
    )
    auth_retry_interval: float = Field(
        60.0, gt=0, description="A sink stopped by 401/403 re-probes its destination this often, seconds."
    )


class DuckDBSettings(BaseModel):
    path: Path = Field(Path("warehouse.duckdb"), description="Embedded warehouse file.")
    max_hold_seconds: float = Field(
        5.0, ge=0, description="Longest the sink keeps the file locked under load before letting readers and other writers in (0 = after every batch)."
    )
    memory_limit_mb: int = Field(192, ge=64, description="DuckDB memory limit of the sink process, MB.")


class PostHogSettings(BaseModel):
    api_key: SecretStr | None = Field(None, description="Project API key (also POSTHOG_API_KEY).")
    host: str = Field("https://us.i.posthog.com", description="PostHog host (also POSTHOG_HOST).")
    personal_api_key: SecretStr | None = Field(None, description="Personal API key for local flag evaluation (also POSTHOG_PERSONAL_API_KEY).")
    gzip: bool = Field(True, description="Gzip request bodies.")
    timeout: float = Field(15.0, gt=0, description="Seconds per /batch/ request; a timeout is retried.")
    max_request_bytes: int = Field(20 * 1024 * 1024 - 1, ge=1024, description="Largest request body (PostHog: < 20 MB).")
    max_event_bytes: int = Field(900 * 1024, ge=1024, description="Largest event; bigger ones are truncated to fit (SDK cap 900 KiB).")
    max_batch_events: int = Field(1000, ge=1, description="Most events per request.")


class RudderStackSettings(BaseModel):
    write_key: SecretStr | None = Field(None, description="Source write key (also RUDDERSTACK_WRITE_KEY).")
    data_plane_url: str | None = Field(None, description="Data plane URL (also RUDDERSTACK_DATA_PLANE_URL).")
    gzip: bool = Field(True, description="Gzip request bodies.")
    timeout: float = Field(15.0, gt=0, description="Seconds per /v1/batch request; a timeout is retried.")
    # rudder-server's gateway default (Gateway.maxReqSizeInKB = 4000), a little under 4 MiB.
    max_request_bytes: int = Field(4000 * 1024, ge=1024, description="Largest request body (gateway default 4000 KB).")
    max_event_bytes: int = Field(32 * 1024, ge=256, description="Largest event; bigger ones are truncated to fit.")
    max_batch_events: int = Field(500, ge=1, description="Most events per request.")


class SnowflakeSettings(BaseModel):
    account: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    private_key_file: Path | None = Field(None, description="PEM private key for key-pair authentication.")
    private_key_passphrase: SecretStr | None = None
    role: str | None = None
    warehouse: str | None = None
    database: str | None = None
    schema_name: str = Field("ANALYTICS", alias="schema", description="Target schema (also SNOWFLAKE_SCHEMA).")
    host: str | None = Field(None, description="Override host (emulators, private link).")
    port: int | None = Field(None, description="Override port (emulators).")
    protocol: Literal["https", "http"] = Field("https", description="https; http only for local emulators.")

    model_config = {"populate_by_name": True}


class BigQuerySettings(BaseModel):
    project: str | None = Field(None, description="GCP project (also GOOGLE_CLOUD_PROJECT).")
    dataset: str = Field("analytics", description="Dataset (also BIGQUERY_DATASET).")
    location: str | None = None
    api_endpoint: str | None = Field(None, description="Explicit endpoint; anonymous credentials are used with it (emulators).")


class FlagSettings(BaseModel):
    database_url: str | None = Field(None, description="PostgreSQL URL of the flag fallback store; unset = embedded file.")
    embedded_path: Path = Field(Path("flags.sqlite3"), description="Embedded flag store used when no database_url is set.")
    cache_ttl: float = Field(
        30.0, gt=0, description="Seconds a flag decision is cached; a flag changed at any source takes effect within this."
    )
    posthog_mode: Literal["local", "remote", "off"] = Field(
        "local",
        description="PostHog as the first flag source: local = SDK local evaluation (needs posthog.personal_api_key), "
        "remote /flags only for flags it cannot decide locally; remote = also ask /flags per user when there is no "
        "personal key (one call per user and TTL); off = flag database and default only.",
    )
    remote_timeout: float = Field(
        1.0, gt=0, description="Timeout of one remote PostHog /flags call (only for flags local evaluation cannot decide)."
    )
    remote_backoff: float = Field(
        30.0, gt=0, description="After a failed remote /flags call, seconds to skip PostHog remote evaluation (fallback decides)."
    )
    remote_budget: float = Field(
        2.0, gt=0, description="Seconds of remote /flags calls allowed per batch; beyond it the fallback decides (never block the stream)."
    )
    startup_wait: float = Field(
        5.0, ge=0, description="Seconds a worker waits at start for the first PostHog flag definitions before going on without them."
    )
    db_timeout: float = Field(2.0, gt=0, description="Connect/statement timeout of the flag database, seconds.")
    gates: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            sink: {
                "$ai_generation": "track_model_costs",
                "prompt_blocked": "enable_guardrails_tracing",
                "rag_query_triggered": "versioned_rag_tracking",
            }
            for sink in ("posthog", "rudderstack")
        },
        description='Gating policy: {sink: {event: flag key}}; an event is forwarded to a sink only when its flag is on. '
        'JSON in env, e.g. ETL_FLAGS__GATES=\'{"posthog":{"prompt_blocked":"enable_guardrails_tracing"}}\'. '
        "Sinks not listed (the warehouses by default) receive everything.",
    )

    @field_validator("gates")
    @classmethod
    def _valid_gates(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for sink, mapping in value.items():
            if sink not in KNOWN_SINKS:
                raise ValueError(f"gates: unknown sink {sink!r}; choose from {', '.join(KNOWN_SINKS)}")
            for event, flag in mapping.items():
                if not event.strip() or not flag.strip():
                    raise ValueError(f"gates.{sink}: event names and flag keys must be non-empty")
        return value


class RedactionSettings(BaseModel):
    """PII redaction of sensitive properties (``prompt_blocked.prompt_preview`` and configured paths)."""

    paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra property paths to redact besides the models' sensitive ones (dotted, e.g. "
        "user_note or context.page.search); comma-separated or a JSON list.",
    )
    max_length: int = Field(120, ge=0, description="Redacted text is cut to this many characters.")
    hmac_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC-SHA256 kept beside each redacted value (<key>_hash) so repeats can be counted; "
        "unset = no hash is kept.",
    )
    keep_raw_in_warehouse: bool = Field(
        False,
        description="RISK: stores raw sensitive text (prompts with emails, secrets) in the warehouse; third-party "
        "sinks still get the redacted form. Only for warehouses with access control fit for PII.",
    )

    @field_validator("paths", mode="before")
    @classmethod
    def _parse_paths(cls, value: Any) -> Any:
        return _split_csv(value)


class Settings(BaseSettings):
    """All settings of the job (see the README's configuration table)."""

    model_config = SettingsConfigDict(
        env_prefix="ETL_",
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    role: Annotated[str, Field(description="Worker role: all | normalize | sink:<name>.")] = "all"
    sinks: Annotated[list[str], NoDecode, Field(description="Enabled sinks, comma-separated.")] = ["duckdb"]
    web_port: int = Field(6066, ge=0, le=65535, description="Worker HTTP port (health, metrics); 0 = pick a free port.")
    web_enabled: bool = Field(True, description="Serve /healthz, /readyz and /metrics on the web port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of the workers and commands.")
    log_format: Literal["json", "text"] = Field(
        "text", description="json: one JSON object per line with a batch_id per batch; text: for humans."
    )
    data_dir: Path = Field(Path(".etl"), description="Worker state (Faust tables, pid files).")
    replay: bool = Field(False, description="Mark deliveries as backfill (PostHog historical_migration).")

    kafka: KafkaSettings = KafkaSettings()
    normalize: NormalizeSettings = NormalizeSettings()
    delivery: DeliverySettings = DeliverySettings()
    duckdb: DuckDBSettings = DuckDBSettings()
    posthog: PostHogSettings = PostHogSettings()
    rudderstack: RudderStackSettings = RudderStackSettings()
    snowflake: SnowflakeSettings = SnowflakeSettings()
    bigquery: BigQuerySettings = BigQuerySettings()
    flags: FlagSettings = FlagSettings()
    redaction: RedactionSettings = RedactionSettings()

    @field_validator("sinks", mode="before")
    @classmethod
    def _parse_sinks(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("sinks")
    @classmethod
    def _known_sinks(cls, value: list[str]) -> list[str]:
        cleaned: list[str] = []
        for name in value:
            name = name.strip().lower()
            if name not in KNOWN_SINKS:
                raise ValueError(f"unknown sink {name!r}; choose from {', '.join(KNOWN_SINKS)}")
            if name not in cleaned:
                cleaned.append(name)
        if not cleaned:
            raise ValueError("at least one sink must be enabled")
        return cleaned

    @field_validator("role")
    @classmethod
    def _valid_role(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("all", "normalize"):
            return value
        if value.startswith("sink:") and value[5:] in KNOWN_SINKS:
            return value
        raise ValueError(f"role must be all, normalize or sink:<{'|'.join(KNOWN_SINKS)}>, got {value!r}")

    @model_validator(mode="after")
    def _enabled_sinks_configured(self) -> "Settings":
        # A sink switched on without its destination is a deployment error:
        # fail at start-up, naming the setting, instead of at the first batch.
        required = {
            "posthog": [("posthog.api_key", self.posthog.api_key), ("posthog.host", self.posthog.host)],
            "rudderstack": [
                ("rudderstack.write_key", self.rudderstack.write_key),
                ("rudderstack.data_plane_url", self.rudderstack.data_plane_url),
            ],
            "snowflake": [("snowflake.account", self.snowflake.account), ("snowflake.user", self.snowflake.user)],
            "bigquery": [("bigquery.project", self.bigquery.project)],
        }
        checked = list(self.sinks)
        if self.role.startswith("sink:") and self.role[5:] not in checked:
            checked.append(self.role[5:])  # a worker for one sink validates that sink
        for sink in checked:
            for field, value in required.get(sink, []):
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise ValueError(f"sink {sink!r} is enabled but {field} is not set")
        if "snowflake" in self.sinks and self.snowflake.password is None and self.snowflake.private_key_file is None:
            raise ValueError("sink 'snowflake' needs snowflake.password or snowflake.private_key_file")
        return self

    @property
    def normalize_group(self) -> str:
        return f"{self.kafka.group_prefix}-normalize"

    def sink_group(self, sink: str) -> str:
        return f"{self.kafka.group_prefix}-sink-{sink}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, VendorEnvSource(settings_cls), dotenv_settings, file_secret_settings)


# The vendors' customary variables, mapped onto our nested fields.
VENDOR_ENV: dict[str, tuple[str, str]] = {
    "POSTHOG_API_KEY": ("posthog", "api_key"),
    "POSTHOG_PROJECT_API_KEY": ("posthog", "api_key"),
    "POSTHOG_HOST": ("posthog", "host"),
    "POSTHOG_PERSONAL_API_KEY": ("posthog", "personal_api_key"),
    "RUDDERSTACK_WRITE_KEY": ("rudderstack", "write_key"),
    "RUDDERSTACK_DATA_PLANE_URL": ("rudderstack", "data_plane_url"),
    "SNOWFLAKE_ACCOUNT": ("snowflake", "account"),
    "SNOWFLAKE_USER": ("snowflake", "user"),
    "SNOWFLAKE_PASSWORD": ("snowflake", "password"),
    "SNOWFLAKE_PRIVATE_KEY_FILE": ("snowflake", "private_key_file"),
    "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": ("snowflake", "private_key_passphrase"),
    "SNOWFLAKE_ROLE": ("snowflake", "role"),
    "SNOWFLAKE_WAREHOUSE": ("snowflake", "warehouse"),
    "SNOWFLAKE_DATABASE": ("snowflake", "database"),
    "SNOWFLAKE_SCHEMA": ("snowflake", "schema"),
    "GOOGLE_CLOUD_PROJECT": ("bigquery", "project"),
    "BIGQUERY_DATASET": ("bigquery", "dataset"),
    "BIGQUERY_LOCATION": ("bigquery", "location"),
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
}


class VendorEnvSource(EnvSettingsSource):
    """Reads the vendors' usual variable names as a fallback for ``ETL_*``."""

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for var, (section, field) in VENDOR_ENV.items():
            value = os.environ.get(var)
            if value is not None and value != "":
                data.setdefault(section, {}).setdefault(field, value)
        return data


class ConfigError(SystemExit):
    """Raised at start-up for an invalid configuration; exits with status 2."""


def format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        env = "ETL_" + "__".join(str(p) for p in err["loc"]).upper() if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}" + (f"  (env {env})" if env else ""))
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, failing loudly with the field named."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
