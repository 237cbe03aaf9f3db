"""Kafka tooling on kafka-python: topic administration, producers, offsets.

Faust runs the long-lived agents; this module serves the commands around them
(demo, replay, offsets, dlq, status) where a plain client is the right tool.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from etl.config import CoreSettings

log = logging.getLogger("etl.kafka")

#: Topics we create accept messages up to this size (normalized envelopes, dead letters).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


#: How long a one-shot command waits for a reachable broker before it gives up.
COMMAND_CONNECT_TIMEOUT = 3.0


class BrokerUnreachable(KafkaError):
    """No bootstrap broker accepts a connection; the message names the setting and address."""


def _address(host: str) -> tuple[str, int]:
    name, _, port = host.rpartition(":")
    return name.strip("[]"), int(port)


def reachable(settings: CoreSettings, timeout: float = 2.0) -> str | None:
    """The first bootstrap broker that accepts a TCP connection, else None."""
    for host in settings.kafka.hosts:
        try:
            with socket.create_connection(_address(host), timeout=timeout):
                return host
        except (OSError, ValueError):
            continue
    return None


def unreachable_message(settings: CoreSettings, waited: float) -> str:
    return (
        f"no Kafka broker reachable at {settings.kafka.bootstrap_servers} after {waited:.0f} s; "
        "check ETL_KAFKA__BOOTSTRAP_SERVERS (or KAFKA_BOOTSTRAP_SERVERS)"
    )


def wait_for_broker(
    settings: CoreSettings, timeout: float = COMMAND_CONNECT_TIMEOUT, announce: float | None = None
) -> None:
    """Return once a bootstrap broker accepts a connection; raise :class:`BrokerUnreachable`.

    With ``announce``, log what we wait for every ``announce`` seconds (the worker does:
    a silent start-up looks like a hang).
    """
    started = time.monotonic()
    deadline = started + timeout
    last_said = started - (announce or 0)
    while True:
        if reachable(settings, timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
            return
        now = time.monotonic()
        if now >= deadline:
            raise BrokerUnreachable(unreachable_message(settings, now - started))
        if announce is not None and now - last_said >= announce:
            log.warning(
                "waiting for a Kafka broker at %s (ETL_KAFKA__BOOTSTRAP_SERVERS); "
                "giving up in %.0f s (ETL_KAFKA__CONNECT_TIMEOUT)",
                settings.kafka.bootstrap_servers,
                deadline - now,
            )
            last_said = now
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def client_config(settings: CoreSettings) -> dict[str, Any]:
    kafka = settings.kafka
    config: dict[str, Any] = {
        "bootstrap_servers": kafka.hosts,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol.startswith("SASL"):
        config.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password.get_secret_value()
            if kafka.sasl_password
            else None,
        )
    if kafka.ssl_cafile:
        config["ssl_cafile"] = str(kafka.ssl_cafile)
    return config


def admin(settings: CoreSettings, timeout: float = 60.0) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(client_id="etl-admin", **client_config(settings))
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ensure_topics(settings: CoreSettings, partitions: int | None = None) -> None:
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


def producer(settings: CoreSettings, **overrides: Any) -> KafkaProducer:
    config = {
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": MAX_MESSAGE_BYTES,
        "retries": 10,
        **overrides,
    }
    return KafkaProducer(**client_config(settings), **config)


def consumer(settings: CoreSettings, **overrides: Any) -> KafkaConsumer:
    config = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": MAX_MESSAGE_BYTES,
        **overrides,
    }
    return KafkaConsumer(**client_config(settings), **config)


def partitions(kc: KafkaConsumer, topic: str, timeout: float = 10.0) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout
    while True:
        parts = kc.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise KafkaError(
                f"topic {topic!r} not found; a worker creates the topics when it starts "
                "(or check the ETL_KAFKA__*_TOPIC settings)"
            )
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
        answered = [tp for tp, records in batch.items() if records and tp in pending]
        if not answered:
            idle_polls += 1
            continue
        idle_polls = 0  # the others get their own three polls after each answer
        for tp in answered:
            result[tp] = max(result[tp], batch[tp][-1].offset + 1)
        # The first answer holds the whole batch the reported end fell in: done with
        # that partition.  Reading on would follow a busy partition's tail indefinitely.
        pending.difference_update(answered)
        kc.pause(*answered)
    kc.unsubscribe()
    return result


def committed_offsets(settings: CoreSettings, group: str) -> dict[TopicPartition, int]:
    client = admin(settings)
    try:
        offsets = client.list_group_offsets(group).get(group, {})
    finally:
        client.close()
    return {
        tp: meta.offset
        for tp, meta in offsets.items()
        if meta.offset is not None and meta.offset >= 0
    }


def offsets_at_times(
    kc: KafkaConsumer, targets: dict[TopicPartition, int], ends: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Earliest offset per partition whose record timestamp is >= the target (ms);
    ``ends[tp]`` if none.

    ``offsets_for_times`` gives a lower bound: the bundled broker answers at
    batch granularity (the base offset of the first batch whose max timestamp
    reaches the target).  Reading forward from that bound to the first record
    that reaches the target gives Kafka's exact answer on either broker.
    """
    result: dict[TopicPartition, int] = {}
    found = kc.offsets_for_times(dict(targets)) if targets else {}
    scan: dict[TopicPartition, int] = {}
    for tp in targets:
        hit = found.get(tp)
        if (
            hit is None
            or hit.timestamp is None
            or hit.timestamp < 0
            or hit.offset < 0
            or hit.offset >= ends[tp]
        ):
            result[tp] = ends[tp]
        else:
            scan[tp] = hit.offset
    if not scan:
        return result
    kc.assign(list(scan))
    for tp, start in scan.items():
        kc.seek(tp, start)
    pending = dict(scan)
    idle_polls = 0
    while pending and idle_polls < 20:
        batch = kc.poll(timeout_ms=300, max_records=10_000)
        if not batch:
            idle_polls += 1
            continue
        idle_polls = 0
        for tp, records in batch.items():
            if tp not in pending:
                continue
            for rec in records:
                if rec.offset >= ends[tp]:
                    break
                if rec.timestamp >= targets[tp]:
                    result[tp] = rec.offset
                    break
            else:
                if records[-1].offset + 1 < ends[tp]:
                    continue
            result.setdefault(tp, ends[tp])
            pending.pop(tp)
            kc.pause(tp)
    for tp in pending:  # the broker stopped answering: nothing more before the end
        result[tp] = ends[tp]
    kc.unsubscribe()
    return result


def describe_group(settings: CoreSettings, group: str) -> dict[str, Any]:
    """DescribeGroups for one group: state and members.

    kafka-python 3.x maps the reply's authorized-operations bitfield onto its
    ACL enum and fails on the bits the bundled broker sets; we never need
    them, so that step is skipped on this client instance.
    """
    client = admin(settings)
    try:
        client._process_acl_operations = lambda obj: obj
        return client.describe_groups([group])[group]
    finally:
        client.close()


def remove_group_members(settings: CoreSettings, group: str, member_ids: list[str]) -> None:
    """LeaveGroup on behalf of members (a live one rejoins at once, with a rebalance)."""
    from kafka.admin import MemberToRemove

    client = admin(settings)
    try:
        client.remove_group_members(group, [MemberToRemove(member_id=m) for m in member_ids])
    finally:
        client.close()


def alter_committed_offsets(
    settings: CoreSettings, group: str, offsets: dict[TopicPartition, int]
) -> None:
    """Commit ``offsets`` for ``group`` (the group must have no live members on real Kafka)."""
    from kafka.structs import OffsetAndMetadata

    client = admin(settings)
    try:
        result = client.alter_group_offsets(
            group, {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        )
    finally:
        client.close()
    failed = {
        tp: err
        for tp, err in (result or {}).items()
        if err is not None and getattr(err, "errno", None)
    }
    if failed and all(
        getattr(err, "__name__", "") == "UnknownMemberIdError" for err in failed.values()
    ):
        # The bundled broker keeps members that left listed as a Stable group and then
        # refuses an admin commit.  Joining the group ourselves makes the coordinator
        # rebalance (dropping the departed members), and a member may commit.
        _commit_as_member(settings, group, offsets)
        return
    if failed:
        tp, err = next(iter(failed.items()))
        raise KafkaError(
            f"could not set offsets of group {group!r} ({tp.topic}:{tp.partition}: "
            f"{err.__name__ if isinstance(err, type) else err})"
        )


def _commit_as_member(
    settings: CoreSettings, group: str, offsets: dict[TopicPartition, int], timeout: float = 60.0
) -> None:
    from kafka.structs import OffsetAndMetadata

    kc = consumer(
        settings,
        group_id=group,
        client_id=f"{group}-offsets-admin",
        session_timeout_ms=int(settings.kafka.session_timeout * 1000),
        heartbeat_interval_ms=int(settings.kafka.heartbeat_interval * 1000),
    )
    try:
        kc.subscribe(sorted({tp.topic for tp in offsets}))
        deadline = time.monotonic() + timeout
        while not kc.assignment():
            if time.monotonic() > deadline:
                raise KafkaError(f"could not join group {group!r} to commit its offsets")
            kc.poll(timeout_ms=200, max_records=1)
        kc.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
    finally:
        kc.close(autocommit=False)
