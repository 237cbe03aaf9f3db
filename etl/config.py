"""Runtime configuration: the core settings every floor shares.

Every setting is read from the environment with the prefix ``ETL_`` (nested
sections use ``__``, e.g. ``ETL_KAFKA__BOOTSTRAP_SERVERS``).  The vendors' own
variable names (``POSTHOG_API_KEY``, ``KAFKA_BOOTSTRAP_SERVERS``, ...) are
honoured too, at lower priority than the ``ETL_`` form; each section declares
its own (:attr:`Section.vendor_env`).  Settings are validated once at
start-up; a bad value fails with the offending field named.

This module knows no destination.  Each sink declares its own section
(:class:`SinkSection`, in ``sinks/<name>.py``) and ``sinks.settings.Settings``
adds those sections to :class:`CoreSettings`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from etl.role import Role


def _split_csv(value: Any) -> Any:
    """Accept ``a,b`` as well as a JSON/py list for list-valued settings."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            import orjson

            return orjson.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Section(BaseModel):
    """A nested settings section (``ETL_<SECTION>__<FIELD>``)."""

    #: The vendor's customary variable names for fields of this section, at
    #: lower priority than ``ETL_*``: ``{"POSTHOG_HOST": "host"}``.
    vendor_env: ClassVar[dict[str, str]] = {}


class SinkSection(Section):
    """The settings section of one destination (declared by its sink module)."""

    #: Fields that must be set when the sink is enabled.
    required: ClassVar[tuple[str, ...]] = ()

    def problems(self, section: str) -> list[str]:
        """What keeps this destination from starting: each missing setting, by its variables."""
        missing = []
        for name in self.required:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is None or (isinstance(value, str) and not value.strip()):
                missing.append(self.variables(section, name))
        return missing

    @classmethod
    def variables(cls, section: str, field: str) -> str:
        """``ETL_POSTHOG__API_KEY (or POSTHOG_API_KEY)``: how a user sets ``field``."""
        info = cls.model_fields[field]
        names = [f"ETL_{section.upper()}__{(info.alias or field).upper()}"]
        names += [var for var, target in cls.vendor_env.items() if target in (field, info.alias)]
        return names[0] + (f" (or {', '.join(names[1:])})" if names[1:] else "")


class KafkaSettings(Section):
    vendor_env: ClassVar[dict[str, str]] = {"KAFKA_BOOTSTRAP_SERVERS": "bootstrap_servers"}

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of the Kafka brokers."
    )
    raw_topic: str = Field("events.raw", description="Topic the platform produces raw events to.")
    normalized_topic: str = Field("events.normalized", description="Topic of unified events.")
    dlq_topic: str = Field("events.dlq", description="Dead-letter topic (original bytes + reason).")
    partitions: int = Field(4, ge=1, description="Partitions used when this job creates topics.")
    replication_factor: int = Field(1, ge=1, description="Replication factor for created topics.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL "
        "(MSK, Confluent Cloud, Redpanda Cloud).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="PLAIN (Confluent Cloud), SCRAM-SHA-256/512 (MSK, Redpanda)."
    )
    sasl_username: str | None = Field(None, description="SASL user (Confluent: the API key).")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (Confluent: the API secret). Never logged."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    group_prefix: str = Field(
        "etl", description="Consumer groups are <prefix>-normalize and <prefix>-sink-<name>."
    )
    session_timeout: float = Field(
        10.0, gt=0, description="Seconds before the group evicts a silent worker (then rebalances)."
    )
    heartbeat_interval: float = Field(1.0, gt=0, description="Seconds between consumer heartbeats.")
    rebalance_timeout: float = Field(
        10.0, gt=0, description="Seconds members get to rejoin during a rebalance."
    )
    commit_interval: float = Field(
        1.0,
        gt=0,
        description="Seconds between offset commits (of work already durable downstream).",
    )
    fetch_max_wait: float = Field(
        0.1,
        gt=0,
        le=30,
        description="Longest a consumer's fetch waits at the broker for new records, seconds "
        "(an end-to-end latency floor on brokers that do not answer a fetch early).",
    )
    connect_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a worker waits at start for a reachable broker before it exits "
        "non-zero (so an orchestrator restarts it); one-shot commands wait 3 s.",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _valid_bootstrap(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",")]
        if not any(hosts):
            raise ValueError("empty broker list; give host:port[,host:port...]")
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not host or not sep or not name.strip("[]") or not port.isdigit():
                raise ValueError(f"{host!r} is not host:port; give host:port[,host:port...]")
            if not 0 < int(port) < 65536:
                raise ValueError(f"{host!r}: port {port} is out of range 1-65535")
        return ",".join(hosts)

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                f
                for f in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, f) is None
            ]
            if missing:
                raise ValueError(
                    f"security_protocol={self.security_protocol} needs {', '.join(missing)}"
                )
        return self

    @property
    def hosts(self) -> list[str]:
        return [h.strip() for h in self.bootstrap_servers.split(",") if h.strip()]


class NormalizeSettings(Section):
    max_message_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        description="Raw Kafka messages larger than this are rejected (payload_too_large).",
    )
    max_event_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="A single event larger than this is rejected (payload_too_large).",
    )
    max_string_length: int = Field(
        65536,
        ge=64,
        description="Longer string values are truncated and marked in context.etl.truncated.",
    )
    max_depth: int = Field(
        32,
        ge=2,
        description="Deeper nesting in properties/context is rejected (too_deeply_nested).",
    )
    envelope_size: int = Field(
        500,
        ge=1,
        description="Unified events per Kafka message on the normalized topic (1 = one event per "
        "message, keyed by distinct_id).",
    )
    dlq_raw_max_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Original bytes kept in a dead letter; "
        "longer payloads are cut (size and sha256 kept).",
    )


class DeliverySettings(Section):
    batch_max_events: int = Field(
        10000,
        ge=1,
        description="Events a delivering agent gathers per batch "
        "(a sink may split further by its own limits).",
    )
    batch_max_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024 * 1024,
        description="Encoded bytes a delivering agent gathers per batch at most, whatever the "
        "event count (bounds a worker's memory when events are large).",
    )
    # 0.2 s: at half load it took the DuckDB path's typical produce -> warehouse
    # latency from about 500 to 300 ms; a backlog fills batches by count anyway.
    flush_interval: float = Field(
        0.2, gt=0, description="Seconds a delivering agent waits to fill a batch."
    )
    retry_initial: float = Field(0.2, gt=0, description="First retry back-off, seconds.")
    retry_max: float = Field(30.0, gt=0, description="Cap of the exponential back-off, seconds.")
    unexpected_error_attempts: int = Field(
        5,
        ge=1,
        description="Attempts on an unexplained sink error before the batch is bisected to isolate "
        "bad events.",
    )
    auth_retry_interval: float = Field(
        60.0,
        gt=0,
        description="A sink stopped by 401/403 re-probes its destination this often, seconds.",
    )


class PostHogSettings(Section):
    """The PostHog project: flags read it, and the PostHog sink extends it."""

    vendor_env: ClassVar[dict[str, str]] = {
        "POSTHOG_API_KEY": "api_key",
        "POSTHOG_PROJECT_API_KEY": "api_key",
        "POSTHOG_HOST": "host",
        "POSTHOG_PERSONAL_API_KEY": "personal_api_key",
    }

    api_key: SecretStr | None = Field(None, description="Project API key.")
    host: str = Field("https://us.i.posthog.com", description="PostHog host.")
    personal_api_key: SecretStr | None = Field(
        None, description="Personal API key for local flag evaluation."
    )


class FlagSettings(Section):
    database_url: str | None = Field(
        None, description="PostgreSQL URL of the flag fallback store; unset = embedded file."
    )
    embedded_path: Path = Field(
        Path("flags.sqlite3"), description="Embedded flag store used when no database_url is set."
    )
    cache_ttl: float = Field(
        30.0,
        gt=0,
        description="Seconds a flag decision is cached; "
        "a flag changed at any source takes effect within this.",
    )
    posthog_mode: Literal["local", "remote", "off"] = Field(
        "local",
        description="PostHog as the first flag source: local = SDK local evaluation (needs "
        "posthog.personal_api_key), remote /flags only for flags it cannot decide locally; "
        "remote = also ask /flags per user when there is no personal key (one call per user and "
        "TTL); off = flag database and default only.",
    )
    remote_timeout: float = Field(
        1.0,
        gt=0,
        description="Timeout of one remote PostHog /flags call "
        "(only for flags local evaluation cannot decide).",
    )
    remote_backoff: float = Field(
        30.0,
        gt=0,
        description="After a failed remote /flags call, "
        "seconds to skip PostHog remote evaluation (fallback decides).",
    )
    remote_budget: float = Field(
        2.0,
        gt=0,
        description="Seconds of remote /flags calls allowed per batch; beyond it the fallback "
        "decides (never block the stream).",
    )
    startup_wait: float = Field(
        5.0,
        ge=0,
        description="Seconds a worker waits at start for the first PostHog flag definitions before "
        "going on without them.",
    )
    db_timeout: float = Field(
        2.0, gt=0, description="Connect/statement timeout of the flag database, seconds."
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
            # Only the scheme is shown: the rest of a URL may hold a password.
            shown = f"scheme {scheme!r}" if scheme else "a value without a scheme"
            raise ValueError(
                f"the flag database must be PostgreSQL (postgresql://user@host/db), got {shown}"
            )
        return value

    gates: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            sink: {
                "$ai_generation": "track_model_costs",
                "prompt_blocked": "enable_guardrails_tracing",
                "rag_query_triggered": "versioned_rag_tracking",
            }
            for sink in ("posthog", "rudderstack")
        },
        description="Gating policy: {sink: {event: flag key}}; an event is forwarded to a sink "
        "only when its flag is on. JSON in env, e.g. "
        'ETL_FLAGS__GATES=\'{"posthog":{"prompt_blocked":"enable_guardrails_tracing"}}\'. '
        "Sinks not listed (the warehouses by default) receive everything.",
    )

    @field_validator("gates")
    @classmethod
    def _valid_gates(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for sink, mapping in value.items():
            for event, flag in mapping.items():
                if not event.strip() or not flag.strip():
                    raise ValueError(f"gates.{sink}: event names and flag keys must be non-empty")
        return value


class RedactionSettings(Section):
    """PII redaction of sensitive properties
    (``prompt_blocked.prompt_preview`` and configured paths).
    """

    paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra property paths to redact besides the models' sensitive ones (dotted, "
        "e.g. user_note or context.page.search); comma-separated or a JSON list.",
    )
    max_length: int = Field(120, ge=0, description="Redacted text is cut to this many characters.")
    hmac_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC-SHA256 kept beside each redacted value (<key>_hash) so "
        "repeats can be counted; unset = no hash is kept.",
    )
    keep_raw_in_warehouse: bool = Field(
        False,
        description="RISK: stores raw sensitive text (prompts with emails, secrets) in the "
        "warehouse; third-party sinks still get the redacted form. Only for warehouses with access "
        "control fit for PII.",
    )

    @field_validator("paths", mode="before")
    @classmethod
    def _parse_paths(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("paths")
    @classmethod
    def _dotted_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not all(part.strip() for part in path.split(".")):
                raise ValueError(
                    f"{path!r} is not a dotted property path (e.g. user_note or "
                    "context.page.search)"
                )
        return value


class ContractSettings(Section):
    """Event contracts: the tracking plan the normalize stage enforces."""

    plan_path: Path | None = Field(
        None,
        description="Tracking-plan file (YAML or JSON); unset = the platform events' generated "
        "contracts only, every other event allowed.",
    )


class ErasureSettings(Section):
    """Erasure (etl forget) and the suppression list the pipeline checks."""

    state_path: Path = Field(
        Path(".etl/erasure.sqlite"),
        description="SQLite file of the suppression list and the erasure audit (shared by "
        "etl forget and every worker).",
    )
    hmac_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC-SHA256 that ids are stored as; unset = redaction.hmac_secret. "
        "One of them is required by etl forget.",
    )
    suppressed_mode: Literal["drop", "anonymise"] = Field(
        "drop",
        description="What happens to later events of a forgotten person: drop them, or land them "
        "with the ids replaced by a hash and traits removed.",
    )
    reload_interval: float = Field(
        2.0, gt=0, description="Seconds between re-reads of the suppression list by a worker."
    )
    posthog_project_id: str | None = Field(
        None,
        description="PostHog project id for person deletion (with posthog.personal_api_key).",
    )
    rudderstack_api_url: str = Field(
        "https://api.rudderstack.com",
        description="RudderStack control-plane API (User Suppression API) base URL.",
    )
    rudderstack_access_token: SecretStr | None = Field(
        None, description="RudderStack personal access token for the User Suppression API."
    )
    rudderstack_regulation: Literal["suppress", "suppress_with_delete"] = Field(
        "suppress_with_delete", description="Regulation type sent to RudderStack."
    )
    rudderstack_destination_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Destinations a suppress_with_delete regulation names (comma-separated).",
    )
    timeout: float = Field(10.0, gt=0, description="Seconds per vendor deletion request.")

    @field_validator("rudderstack_destination_ids", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        return _split_csv(value)


def _role(value: Any) -> Role:
    return Role.parse(value)


class CoreSettings(BaseSettings):
    """The settings every floor shares; ``sinks.settings.Settings`` adds the destinations."""

    model_config = SettingsConfigDict(
        env_prefix="ETL_",
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    role: Annotated[
        Role,
        NoDecode,
        BeforeValidator(_role),
        PlainSerializer(str),
        Field(description="Worker role: all | normalize | sink:<name>."),
    ] = Role("all")
    sinks: Annotated[list[str], NoDecode, Field(description="Enabled sinks, comma-separated.")] = [
        "duckdb"
    ]
    web_port: int = Field(
        6066,
        ge=0,
        le=65535,
        description="Worker HTTP port (health, metrics); 0 = pick a free port.",
    )
    web_enabled: bool = Field(
        True, description="Serve /healthz, /readyz and /metrics on the web port."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the workers and commands."
    )
    log_format: Literal["json", "text"] = Field(
        "text",
        description="json: one JSON object per line with a batch_id per batch; text: for humans.",
    )
    data_dir: Path = Field(Path(".etl"), description="Worker state (Faust tables, pid files).")
    replay: bool = Field(
        False, description="Mark deliveries as backfill (PostHog historical_migration)."
    )
    metrics_urls: Annotated[
        list[str],
        NoDecode,
        Field(
            description="Workers' /metrics URLs for etl status, comma-separated (production); "
            "unset = the local workers found in the data dir."
        ),
    ] = []

    kafka: KafkaSettings = KafkaSettings()
    normalize: NormalizeSettings = NormalizeSettings()
    delivery: DeliverySettings = DeliverySettings()
    posthog: PostHogSettings = PostHogSettings()
    flags: FlagSettings = FlagSettings()
    redaction: RedactionSettings = RedactionSettings()
    contracts: ContractSettings = ContractSettings()
    erasure: ErasureSettings = ErasureSettings()

    @field_validator("sinks", "metrics_urls", mode="before")
    @classmethod
    def _parse_sinks(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("sinks")
    @classmethod
    def _distinct_sinks(cls, value: list[str]) -> list[str]:
        cleaned: list[str] = []
        for name in value:
            name = name.strip().lower()
            if name not in cleaned:
                cleaned.append(name)
        if not cleaned:
            raise ValueError("at least one sink must be enabled")
        return cleaned

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_dir(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{str(value)!r} exists and is not a directory")
        return value

    @property
    def normalize_group(self) -> str:
        return Role("normalize").group(self.kafka.group_prefix)

    def sink_group(self, sink: str) -> str:
        return Role.for_sink(sink).group(self.kafka.group_prefix)

    def group(self, role: Role) -> str:
        return role.group(self.kafka.group_prefix)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            StrictJsonEnvSource(settings_cls),
            VendorEnvSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )


def sections(settings_cls: type[BaseModel]) -> dict[str, type[Section]]:
    """Section name -> its model, for every nested section of ``settings_cls``."""
    out: dict[str, type[Section]] = {}
    for name, info in settings_cls.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            out[name] = annotation
    return out


def vendor_env(settings_cls: type[BaseModel]) -> dict[str, tuple[str, str]]:
    """Every vendor variable the settings read: ``{"POSTHOG_HOST": ("posthog", "host")}``."""
    return {
        var: (section, field)
        for section, model in sections(settings_cls).items()
        for var, field in model.vendor_env.items()
    }


class VendorEnvSource(EnvSettingsSource):
    """Reads the vendors' usual variable names as a fallback for ``ETL_*``."""

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for var, (section, field) in vendor_env(self.settings_cls).items():
            value = os.environ.get(var)
            if value is not None and value != "":
                data.setdefault(section, {}).setdefault(field, value)
        return data


class StrictJsonEnvSource(EnvSettingsSource):
    """The ``ETL_*`` source; a value that must be JSON and is not fails naming its variable."""

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as exc:
            suffix = field_name.upper()
            names = [
                n
                for n, v in os.environ.items()
                if n.upper().startswith("ETL_") and n.upper().endswith(suffix) and v == value
            ]
            variable = names[0] if names else f"ETL_*{suffix}"
            # ConfigError is a SystemExit: pydantic-settings lets it through unwrapped.
            raise ConfigError(
                f"invalid configuration: {variable} is not valid JSON ({exc})"
            ) from None


#: ``ETL_*`` variables that are not settings (the test harness's own).
NOT_SETTINGS = frozenset({"ETL_BQEMU_VENV"})


def env_names(settings_cls: type[BaseModel]) -> set[str]:
    """Every ``ETL_*`` variable the settings read: ``ETL_LOG_LEVEL``, ``ETL_KAFKA__PARTITIONS``."""
    names = set()
    for name, info in settings_cls.model_fields.items():
        top = f"ETL_{(info.alias or name).upper()}"
        names.add(top)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for field, sub in annotation.model_fields.items():
                names.add(f"{top}__{(sub.alias or field).upper()}")
    return names


def unknown_env_warnings(
    settings_cls: type[BaseModel], environ: dict[str, str] | None = None
) -> list[str]:
    """One warning per ``ETL_*`` variable no setting reads, naming the closest real one."""
    import difflib

    known = env_names(settings_cls)
    warnings = []
    for var in sorted(os.environ if environ is None else environ):
        upper = var.upper()
        if not upper.startswith("ETL_") or upper in known or upper in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; it is ignored"
        warnings.append(f"warning: {var} is not a setting{hint}")
    return warnings


class ConfigError(SystemExit):
    """Raised at start-up for an invalid configuration; exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        env = "ETL_" + "__".join(str(p) for p in err["loc"]).upper() if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ")
        named = "(env " in msg  # the message names its variable itself
        lines.append(f"  {loc}: {msg}" + (f"  (env {env})" if env and not named else ""))
    return "\n".join(lines)


def duckdb_file_problem(path: Path | str, variable: str = "ETL_DUCKDB__PATH") -> str | None:
    """Why ``path`` cannot be a DuckDB warehouse, or None (a missing one is created when used)."""
    path = Path(path)
    if path.is_dir():
        return f"{variable}: {str(path)!r} is a directory, not a DuckDB file"
    if not path.exists():
        return None
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
    except OSError as exc:
        return f"{variable}: cannot read {str(path)!r} ({exc.strerror})"
    # A DuckDB database file carries the magic bytes "DUCK" at offset 8.
    if head[8:12] != b"DUCK":
        return f"{variable}: {str(path)!r} is not a DuckDB database file"
    return None
