"""``true_end_offsets`` on the real broker while producers keep writing.

The lag metric asks for every assigned partition's end each few seconds, from a
thread inside a busy worker.  The bundled broker under-reports the end, so the
probe reads the partition's last batch to find it; it must read that batch and
stop, not follow the partition's tail for as long as records keep coming (that
decodes the whole stream in Python beside the worker's own work).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from etl import kafka_tools
from ops.harness.broker import EmbeddedBroker
from tests.conftest import isolated_settings


def test_the_end_probe_returns_at_once_while_a_producer_keeps_writing(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker, tmp_path, partitions=1)
    kafka_tools.ensure_topics(settings)
    topic = settings.kafka.raw_topic
    producer = kafka_tools.producer(settings)
    for i in range(2000):  # batches of many records: the end the broker reports is too low
        producer.send(topic, b'{"n": %d}' % i)
    producer.flush()
    stop = threading.Event()
    written = [2000]

    def keep_writing() -> None:
        while not stop.is_set():
            for _ in range(200):
                producer.send(topic, b'{"n": %d}' % written[0])
                written[0] += 1
            producer.flush()
            time.sleep(0.02)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    guard = threading.Timer(8.0, stop.set)  # a probe that follows the writer ends too
    kc = kafka_tools.consumer(settings)
    try:
        tps = kafka_tools.partitions(kc, topic)
        time.sleep(1.0)  # the writer is well under way
        guard.start()
        started = time.monotonic()
        ends = kafka_tools.true_end_offsets(kc, tps)
        took = time.monotonic() - started
        stop.set()
        writer.join(10)
        # Quiet now: the same consumer (the lag reporter keeps one) finds the exact end.
        settled = kafka_tools.true_end_offsets(kc, tps)
    finally:
        guard.cancel()
        stop.set()
        producer.close()
        kc.close()
    assert 2000 <= ends[tps[0]] <= written[0]
    assert settled[tps[0]] == written[0]
    # Before: it read on behind the writer until the test stopped it (~8 s here).
    assert took < 2.0, f"the end probe took {took:.1f} s"
