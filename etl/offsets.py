"""Consumer-group offsets of the pipeline's groups: time parsing, show, reset.

``etl offsets show|reset``, ``etl status`` and ``etl replay`` resolve positions here.  End
offsets always come from :func:`etl.kafka_tools.true_end_offsets`, and times
from :func:`etl.kafka_tools.offsets_at_times`, never from the broker's raw
"latest" answer (the bundled broker under-reports it; see kafka_tools).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from etl import kafka_tools
from etl.config import CoreSettings

_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (naive = UTC), ``now``, relative ``-3d``/``-2h``/``-30m``/``-10s``/``-1w``,
    or epoch ms.
    """
    now = now or datetime.now(UTC)
    value = text.strip()
    if value.lower() == "now":
        return now
    m = _RELATIVE.match(value.lower())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use ISO 8601, 'now', "
            "epoch milliseconds or -3d/-2h/-30m/-10s"
        ) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def topic_partitions(kc: KafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    return [tp for topic in topics for tp in kafka_tools.partitions(kc, topic)]


def beginning_offsets(kc: KafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """One request per topic: a request mixing topics came back without some partitions here."""
    result: dict[TopicPartition, int] = {}
    for topic in dict.fromkeys(tp.topic for tp in tps):
        result.update(kc.beginning_offsets([tp for tp in tps if tp.topic == topic]))
    return result


@dataclass
class PartitionOffsets:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


def group_offsets(
    settings: CoreSettings,
    group: str,
    topics: list[str],
    kc: KafkaConsumer | None = None,
    known: tuple[dict[TopicPartition, int], dict[TopicPartition, int]] | None = None,
) -> list[PartitionOffsets]:
    """Committed/end/lag per partition; ``known`` = (true ends, beginnings) already measured."""
    own = kc is None
    kc = kc or kafka_tools.consumer(settings)
    try:
        tps = topic_partitions(kc, topics)
        if known is None:
            ends = kafka_tools.true_end_offsets(kc, tps)
            begins = beginning_offsets(kc, tps)
        else:
            ends, begins = known
        committed = kafka_tools.committed_offsets(settings, group)
    finally:
        if own:
            kc.close()
    rows = []
    for tp in tps:
        c = committed.get(tp)
        # With no commit the group starts at the beginning (auto_offset_reset=earliest).
        lag = max(0, ends[tp] - (c if c is not None else begins[tp]))
        rows.append(PartitionOffsets(tp.topic, tp.partition, c, ends[tp], lag))
    return rows


def live_members(settings: CoreSettings, group: str) -> list[str]:
    """Member ids the coordinator lists for ``group``.

    The bundled broker keeps listing a member that left or died (as a Stable
    group) until the next rebalance; ``reset --force`` removes such members.
    """
    info = kafka_tools.describe_group(settings, group)
    return [m["member_id"] for m in info.get("members") or []]


class GroupBusyError(RuntimeError):
    pass


def target_offsets(
    settings: CoreSettings,
    topics: list[str],
    *,
    to_time: str | None = None,
    to_offsets: list[str] | None = None,
    to_earliest: bool = False,
    to_latest: bool = False,
) -> dict[TopicPartition, int]:
    chosen = sum(bool(x) for x in (to_time, to_offsets, to_earliest, to_latest))
    if chosen != 1:
        raise ValueError("choose exactly one of --to-time, --to-offset, --to-earliest, --to-latest")
    kc = kafka_tools.consumer(settings)
    try:
        tps = topic_partitions(kc, topics)
        ends = kafka_tools.true_end_offsets(kc, tps)
        begins = beginning_offsets(kc, tps)
        if to_earliest:
            return {tp: begins[tp] for tp in tps}
        if to_latest:
            return dict(ends)
        if to_time:
            ts = to_ms(parse_time(to_time))
            return kafka_tools.offsets_at_times(kc, {tp: ts for tp in tps}, ends)
        result: dict[TopicPartition, int] = {}
        for spec in to_offsets or []:
            tp, offset = parse_partition_offset(spec, topics)
            if tp not in ends:
                raise ValueError(
                    f"{tp.topic}:{tp.partition} is not a partition of {', '.join(topics)}"
                )
            if not begins[tp] <= offset <= ends[tp]:
                raise ValueError(
                    f"offset {offset} of {tp.topic}:{tp.partition} is outside "
                    f"{begins[tp]}..{ends[tp]}"
                )
            result[tp] = offset
        return result
    finally:
        kc.close()


def parse_partition_offset(spec: str, topics: list[str]) -> tuple[TopicPartition, int]:
    """``P:O`` (the group's first topic) or ``TOPIC:P:O``."""
    parts = spec.strip().split(":")
    try:
        if len(parts) == 2:
            return TopicPartition(topics[0], int(parts[0])), int(parts[1])
        if len(parts) >= 3:
            return TopicPartition(":".join(parts[:-2]), int(parts[-2])), int(parts[-1])
    except ValueError:
        pass
    raise ValueError(f"cannot read {spec!r}: use PARTITION:OFFSET or TOPIC:PARTITION:OFFSET")


def reset(
    settings: CoreSettings, group: str, topics: list[str], *, force: bool = False, **target: Any
) -> dict[TopicPartition, int]:
    """Move ``group``'s committed offsets on ``topics``;
    refuses while it has live members unless ``force``.
    """
    members = live_members(settings, group)
    if members and not force:
        raise GroupBusyError(
            f"group {group} has {len(members)} live member(s); stop its workers first, or --force "
            "(removes the members; a worker still running rejoins and may overwrite the reset "
            "with its next commit)"
        )
    offsets = target_offsets(settings, topics, **target)
    if members:
        # Forced: members must leave for the coordinator to accept an admin commit.
        kafka_tools.remove_group_members(settings, group, members)
    kafka_tools.alter_committed_offsets(settings, group, offsets)
    return offsets


def rows_as_json(rows: list[PartitionOffsets]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
