"""A whole pipeline on one machine: topics, worker processes, producing, draining.

``etl demo``, ``etl dev``, the end-to-end tests and the benchmark all drive
the real workers through this class, so they exercise exactly what is
deployed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import TopicPartition

from etl import kafka_tools
from etl.role import Role
from ops.harness.broker import free_port
from sinks.settings import Settings
from streams.roles import consumed_topics
from streams.supervisor import WorkerProcess, kill_worker, start_worker, stop_workers


@dataclass
class DrainState:
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    drained: bool = False


class LocalPipeline:
    """Worker processes for every role of ``settings``, sharing ``env``."""

    def __init__(self, settings: Settings, env: dict[str, str], work_dir: Path) -> None:
        self.settings = settings
        self.env = env
        self.work_dir = work_dir
        self.workers: list[WorkerProcess] = []
        self.produced_ends: dict[TopicPartition, int] = {}

    @classmethod
    def create(
        cls, settings: Settings, work_dir: Path, extra_env: dict[str, str] | None = None
    ) -> LocalPipeline:
        """Settings -> the ETL_* environment that makes worker processes see the same settings."""
        k = settings.kafka
        env = dict(os.environ)
        env.update(
            {
                "ETL_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
                "ETL_KAFKA__PARTITIONS": str(k.partitions),
                "ETL_KAFKA__RAW_TOPIC": k.raw_topic,
                "ETL_KAFKA__NORMALIZED_TOPIC": k.normalized_topic,
                "ETL_KAFKA__DLQ_TOPIC": k.dlq_topic,
                "ETL_KAFKA__GROUP_PREFIX": k.group_prefix,
                "ETL_SINKS": ",".join(settings.sinks),
                "ETL_DUCKDB__PATH": str(Path(settings.duckdb.path).resolve()),
                "ETL_DATA_DIR": str(work_dir / "state"),
                "ETL_LOG_FORMAT": "json",
                **(extra_env or {}),
            }
        )
        kafka_tools.ensure_topics(settings)
        return cls(settings, env, work_dir)

    # --------------------------------------------------------------- workers
    def start(self, roles: Iterable[Role | str] | None = None) -> list[WorkerProcess]:
        chosen = [Role.parse(r) for r in roles] if roles is not None else self.settings.roles()
        started = [
            start_worker(role, self.env, free_port(), self.work_dir / "logs") for role in chosen
        ]
        self.workers.extend(started)
        return started

    def worker(self, role: Role | str) -> WorkerProcess:
        wanted = Role.parse(role)
        return next(w for w in self.workers if w.role == wanted and w.alive())

    def kill(self, role: Role | str) -> WorkerProcess:
        victim = self.worker(role)
        kill_worker(victim)
        self.workers.remove(victim)
        return victim

    def stop(self) -> None:
        stop_workers(self.workers)
        self.workers.clear()

    def check_alive(self) -> None:
        dead = [w for w in self.workers if not w.alive()]
        if dead:
            w = dead[0]
            raise RuntimeError(
                f"worker {w.role} died (exit {w.process.returncode}); "
                f"log {w.log_path}:\n{tail(w.log_path)}"
            )  # type: ignore[union-attr]

    # -------------------------------------------------------------- produce
    def produce(
        self, values: Iterable[bytes], topic: str | None = None, key: bytes | None = None
    ) -> int:
        """Produce raw messages and remember the exact end offsets (from the acks)."""
        producer = kafka_tools.producer(self.settings)
        failures: list[BaseException] = []
        ends = self.produced_ends

        def on_sent(meta: Any) -> None:
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)

        n = 0
        for value in values:
            producer.send(
                topic or self.settings.kafka.raw_topic, value=value, key=key
            ).add_callback(on_sent).add_errback(failures.append)
            n += 1
        producer.flush()
        producer.close()
        if failures:
            raise RuntimeError(f"{len(failures)} messages could not be produced: {failures[0]}")
        return n

    def note_ends(self, topic: str | None = None) -> dict[TopicPartition, int]:
        """Record the true end offsets of ``topic`` (default raw) as produced, e.g. after
        another process (``etl dlq requeue``) or a custom producer wrote to it."""
        kc = kafka_tools.consumer(self.settings)
        try:
            ends = kafka_tools.true_end_offsets(
                kc, kafka_tools.partitions(kc, topic or self.settings.kafka.raw_topic)
            )
        finally:
            kc.close()
        for tp, end in ends.items():
            self.produced_ends[tp] = max(self.produced_ends.get(tp, 0), end)
        return ends

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run an ``etl`` command with this pipeline's settings (and ``env`` overrides)."""
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # ---------------------------------------------------------------- drain
    def drain_state(self, kc: Any = None) -> DrainState:
        s = self.settings
        own = kc is None
        kc = kc or kafka_tools.consumer(s)
        try:
            state = DrainState()
            committed = kafka_tools.committed_offsets(s, s.normalize_group)
            raw = {
                tp: end for tp, end in self.produced_ends.items() if tp.topic == s.kafka.raw_topic
            }
            done = sum(min(committed.get(tp, 0), end) for tp, end in raw.items())
            total = sum(raw.values())
            state.groups[s.normalize_group] = (done, total)
            drained = done >= total
            if drained:
                # The outputs are complete once the normalizer committed all
                # input: it commits only after the broker acked its output.
                outputs = kafka_tools.partitions(
                    kc, s.kafka.normalized_topic
                ) + kafka_tools.partitions(kc, s.kafka.dlq_topic)
                ends = kafka_tools.true_end_offsets(kc, outputs)
                for sink in s.sinks:
                    topics = set(consumed_topics(s, Role.for_sink(sink)))
                    sc = kafka_tools.committed_offsets(s, s.sink_group(sink))
                    g_done = sum(
                        min(sc.get(tp, 0), e) for tp, e in ends.items() if tp.topic in topics
                    )
                    g_total = sum(e for tp, e in ends.items() if tp.topic in topics)
                    state.groups[s.sink_group(sink)] = (g_done, g_total)
                    drained = drained and g_done >= g_total
            state.drained = drained
            return state
        finally:
            if own:
                kc.close()

    def wait_drained(
        self, timeout: float = 120.0, on_progress: Any = None, poll: float = 0.5
    ) -> DrainState:
        kc = kafka_tools.consumer(self.settings)
        started = time.monotonic()
        steady = 0
        try:
            while True:
                self.check_alive()
                state = self.drain_state(kc)
                if on_progress:
                    on_progress(state)
                steady = steady + 1 if state.drained else 0
                if steady >= 2:
                    return state
                if time.monotonic() - started > timeout:
                    logs = "\n".join(
                        f"--- {w.role}\n{tail(w.log_path, 1500)}" for w in self.workers
                    )
                    raise TimeoutError(
                        f"pipeline not drained after {timeout:.0f}s: {state.groups}\n{logs}"
                    )
                time.sleep(poll)
        finally:
            kc.close()


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""
