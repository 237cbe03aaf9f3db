"""Kafka tooling on kafka-python: topic administration, producers, offsets.

Faust runs the long-lived agents; this module serves the commands around them
(demo, replay, offsets, dlq, status) where a plain client is the right tool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from etl.config import Settings

log = logging.getLogger("etl.kafka")

#: Topics we create accept messages up to this size (normalized envelopes, dead letters).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def client_config(settings: Settings) -> dict[str, Any]:
    kafka = settings.kafka
    config: dict[str, Any] = {"bootstrap_servers": kafka.hosts, "security_protocol": kafka.security_protocol}
    if kafka.security_protocol.startswith("SASL"):
        config.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        )
    if kafka.ssl_cafile:
        config["ssl_cafile"] = str(kafka.ssl_cafile)
    return config


def admin(settings: Settings, timeout: float = 60.0) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(client_id="etl-admin", **client_config(settings))
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ensure_topics(settings: Settings, partitions: int | None = None) -> None:
    """Create the raw, normalized and dead-letter topics if they are missing."""
    kafka = settings.kafka
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        wanted = [
            NewTopic(
                name,
                num_partitions=partitions or kafka.partitions,
                replication_factor=kafka.replication_factor,
                topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
            )
            for name in (kafka.raw_topic, kafka.normalized_topic, kafka.dlq_topic)
            if name not in existing
        ]
        if wanted:
            try:
                client.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", ", ".join(t.name for t in wanted))
    finally:
        client.close()


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    config = {
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": MAX_MESSAGE_BYTES,
        "retries": 10,
        **overrides,
    }
    return KafkaProducer(**client_config(settings), **config)


def consumer(settings: Settings, **overrides: Any) -> KafkaConsumer:
    config = {"enable_auto_commit": False, "auto_offset_reset": "earliest", "fetch_max_bytes": 64 * 1024 * 1024,
              "max_partition_fetch_bytes": MAX_MESSAGE_BYTES, **overrides}
    return KafkaConsumer(**client_config(settings), **config)


def partitions(kc: KafkaConsumer, topic: str, timeout: float = 10.0) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout
    while True:
        parts = kc.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise KafkaError(f"topic {topic!r} not found")
        time.sleep(0.2)


def true_end_offsets(kc: KafkaConsumer, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """End offsets that survive a broker that under-reports its high watermark.

    The bundled broker answers ListOffsets "latest" with the last *batch's*
    base offset + 1.  Fetching from just below the reported end returns that
    whole batch, whose last record gives the true end.  Against real Kafka
    the fetch returns one record and changes nothing.
    """
    tps = list(tps)
    reported = kc.end_offsets(tps)
    result = dict(reported)
    probe = [tp for tp in tps if reported[tp] > 0]
    if not probe:
        return result
    kc.assign(probe)
    for tp in probe:
        kc.seek(tp, reported[tp] - 1)
    pending = set(probe)
    idle_polls = 0
    while pending and idle_polls < 3:
        batch = kc.poll(timeout_ms=300, max_records=100_000)
        if not batch:
            idle_polls += 1
            continue
        idle_polls = 0
        for tp, records in batch.items():
            if records:
                result[tp] = max(result[tp], records[-1].offset + 1)
        # Keep reading while a partition still returns records past what we know.
        pending = {tp for tp in pending if kc.position(tp) < result[tp] or tp in batch}
        if not any(batch.values()):
            break
    kc.unsubscribe()
    return result


def committed_offsets(settings: Settings, group: str) -> dict[TopicPartition, int]:
    client = admin(settings)
    try:
        offsets = client.list_group_offsets(group).get(group, {})
    finally:
        client.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset is not None and meta.offset >= 0}
