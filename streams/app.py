"""The Faust app of one worker: ``create_app(settings, role)``.

Faust ties a consumer group to an app id, so each role is its own app id and
its own process: a slow or broken destination falls behind without holding
back the others, and each role scales alone.  Building an app is a function
call; importing this module builds nothing.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

import faust

from etl.role import Role
from streams import transport
from streams.logs import dict_config
from streams.transport import ChunkSchema

if TYPE_CHECKING:
    from sinks.settings import Settings


class EtlApp(faust.App):
    """A Faust app that knows its settings and role."""

    def __init__(self, settings: Settings, role: Role, **options: Any) -> None:
        super().__init__(settings.group(role), **options)
        self.settings = settings
        self.role = role
        #: Set once this worker has completed a consumer-group join (even with no partitions).
        self.joined = asyncio.Event()

    def chunk_topic(self, name: str) -> faust.TopicT:
        """A topic whose stream events are per-partition chunks of records (streams.transport)."""
        return self.topic(name, schema=ChunkSchema(), internal=False)


def broker_credentials(settings: Settings) -> object | None:
    kafka = settings.kafka
    context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None
        )
    if kafka.security_protocol.startswith("SASL"):
        if not (kafka.sasl_username and kafka.sasl_password and kafka.sasl_mechanism):
            raise ValueError("SASL needs kafka.sasl_mechanism, sasl_username and sasl_password")
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(settings: Settings, role: Role) -> EtlApp:
    if role.kind == "all":
        raise ValueError("role 'all' runs one process per role; build each role's app on its own")
    transport.register()
    data_dir = settings.data_dir / role.slug
    data_dir.mkdir(parents=True, exist_ok=True)
    return EtlApp(
        settings,
        role,
        broker=[f"etl://{host}" for host in settings.kafka.hosts],
        broker_credentials=broker_credentials(settings),
        autodiscover=False,
        datadir=str(data_dir),
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        web_host="127.0.0.1",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka.session_timeout,
        broker_heartbeat_interval=settings.kafka.heartbeat_interval,
        broker_rebalance_timeout=settings.kafka.rebalance_timeout,
        broker_commit_interval=settings.kafka.commit_interval,
        broker_commit_every=10_000_000,
        # Records per partition fetch.  Normalized records are envelopes of up
        # to envelope_size events, so a sink fetches fewer of them to keep a
        # fetched chunk near one sink batch (memory stays bounded).
        broker_max_poll_records=2000
        if role.kind == "normalize"
        else max(2, -(-settings.delivery.batch_max_events // settings.normalize.envelope_size)),
        consumer_max_fetch_size=16 * 1024 * 1024,
        # Chunks (of up to max_poll_records each) buffered per partition before the
        # fetcher pauses it: a backlog waits in Kafka, not in this process's memory.
        # A sink's chunk is a whole batch of envelopes (megabytes); a normalize
        # chunk is a fraction of one batch of raw records and needs more of them.
        stream_buffer_maxsize=8 if role.kind == "normalize" else 4,
        # On stop or rebalance, do not wait for in-flight batches: a sink that
        # is backing off could hold shutdown for minutes.  Unfinished batches
        # were never acked, so they are redelivered - nothing is lost.
        stream_wait_empty=False,
        producer_acks=-1,
        producer_linger=0.005,
        producer_max_request_size=16 * 1024 * 1024,
        producer_max_batch_size=1024 * 1024,
        producer_compression_type="lz4" if _has_lz4() else None,
        store="memory://",
        table_standby_replicas=0,
        logging_config=dict_config(settings.log_level, settings.log_format),
    )


def _has_lz4() -> bool:
    try:
        import lz4  # noqa: F401
    except ImportError:
        return False
    return True
