"""``etl_consumer_lag``: records between this worker group's commit and the true end.

Each worker reports the partitions assigned to it (so summing over workers
counts every partition once) and drops partitions it lost in a rebalance.
Ends come from ``true_end_offsets`` (the bundled broker under-reports its
high watermark), committed offsets from the group coordinator; both on
kafka-python clients in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kafka import TopicPartition

from etl import kafka_tools
from etl.offsets import beginning_offsets
from streams import metrics
from streams.app import EtlApp

log = logging.getLogger("etl.lag")

LAG_INTERVAL = 5.0


class LagReporter:
    def __init__(self, app: EtlApp) -> None:
        self.app = app
        self.group: str = app.conf.id
        self._reported: set[tuple[str, int]] = set()
        self._consumer: Any = None

    def install(self) -> None:
        self.app.timer(interval=LAG_INTERVAL)(self.report)

    def _measure(self, assigned: list[TopicPartition]) -> dict[TopicPartition, int]:
        settings = self.app.settings
        if self._consumer is None:
            # No CRC check: a metric probe re-reads the last batch every few seconds.
            self._consumer = kafka_tools.consumer(
                settings, client_id=f"{self.group}-lag", check_crcs=False
            )
        ends: dict[TopicPartition, int] = {}
        for topic in dict.fromkeys(
            tp.topic for tp in assigned
        ):  # one topic per request (see etl.offsets)
            ends.update(
                kafka_tools.true_end_offsets(
                    self._consumer, [tp for tp in assigned if tp.topic == topic]
                )
            )
        begins = beginning_offsets(self._consumer, assigned)
        committed = kafka_tools.committed_offsets(settings, self.group)
        return {tp: max(0, ends[tp] - committed.get(tp, begins[tp])) for tp in assigned}

    async def report(self) -> None:
        consumer = self.app.consumer
        if consumer is None or self.app.rebalancing:
            return
        assigned = sorted(
            (TopicPartition(tp.topic, tp.partition) for tp in consumer.assignment()),
            key=lambda t: (t.topic, t.partition),
        )
        try:
            lags = await asyncio.to_thread(self._measure, assigned) if assigned else {}
        except Exception as exc:  # noqa: BLE001 - a metric must never stop a worker
            log.warning("consumer lag not measured: %s: %s", type(exc).__name__, exc)
            return
        current = {(tp.topic, tp.partition) for tp in lags}
        for topic, partition in self._reported - current:
            metrics.LAG.remove(self.group, topic, str(partition))
        for tp, lag in lags.items():
            metrics.LAG.labels(self.group, tp.topic, str(tp.partition)).set(lag)
        self._reported = current
