"""The workload and *our* pipeline under measurement.

Ours is measured exactly as deployed: real ``etl worker`` processes (one
``normalize`` per partition share, one ``sink:duckdb``) started by
:class:`etl.pipeline.LocalPipeline` against a raw topic that is already full.

Clock (the same definition the peer uses, see ``bench/peer_quix.py``):

* start: the moment the normalize worker starts consuming - the timestamp of
  its ``[^Worker]: Ready`` log line, which Faust writes right after the first
  partition assignment.  Process start-up and the consumer-group join (~6 s on
  this broker) are excluded, for ours and for the peer alike;
* end: the largest ``loaded_at`` in the warehouse's ``events`` table, i.e. the
  start of the last DuckDB write (its own duration, tens of ms, is excluded for
  both sides);
* events/s = events in the workload (valid + rejected) / (end - start).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import TopicPartition

from bench.proc import cpu_seconds, machine_busy_seconds, vm_hwm_mb
from etl import kafka_tools
from ops.harness.broker import free_port
from ops.harness.local_pipeline import LocalPipeline
from ops.harness.synthetic import Generator
from sinks.settings import Settings
from streams.supervisor import WorkerProcess, start_worker

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Workload:
    """Pre-generated raw messages, with the event counts the normalizer must reach."""

    values: list[bytes]
    valid: int
    rejected: int
    seed: int
    malformed_rate: float
    batch_rate: float

    @property
    def events(self) -> int:
        return self.valid + self.rejected

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.values)


def workload_messages(
    events: int, seed: int = 7, malformed_rate: float = 0.02, batch_rate: float = 0.0
) -> Iterator[Any]:
    """The benchmark's seeded mix, generated as it is read."""
    gen = Generator(seed=seed, malformed_rate=malformed_rate, batch_rate=batch_rate)
    return gen.messages(events)


def make_workload(
    events: int, seed: int = 7, malformed_rate: float = 0.02, batch_rate: float = 0.0
) -> Workload:
    tally = Tally()
    values = list(tally.values(workload_messages(events, seed, malformed_rate, batch_rate)))
    return Workload(values, tally.valid, tally.rejected, seed, malformed_rate, batch_rate)


@dataclass
class Tally:
    """What a stream of generated messages must land as, counted while it passes."""

    valid: int = 0
    rejected: int = 0

    @property
    def events(self) -> int:
        return self.valid + self.rejected

    def values(self, messages: Iterable[Any]) -> Iterator[bytes]:
        for msg in messages:
            self.valid += msg.valid
            self.rejected += msg.rejected
            yield msg.value


def fill_generated(
    bootstrap: str, topic: str, events: int, seed: int
) -> tuple[dict[TopicPartition, int], Tally]:
    """Generate and produce in one pass, holding no workload: 10M events are 3.8 GB."""
    tally = Tally()
    ends, _ = fill_topic(bootstrap, topic, tally.values(workload_messages(events, seed)))
    return ends, tally


def confluent_producer(bootstrap: str) -> Any:
    # librdkafka: kafka-python tops out near 9k msgs/s here, too slow to fill
    # a topic with a million messages (or to pace the latency run).
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 1024 * 1024,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2 * 1024 * 1024,
            "message.max.bytes": kafka_tools.MAX_MESSAGE_BYTES,
        }
    )


class EndTracker:
    """Delivery callback recording the exact end offset of every partition (from the acks)."""

    def __init__(self, ends: dict[TopicPartition, int] | None = None) -> None:
        self.ends: dict[TopicPartition, int] = ends if ends is not None else {}
        self.errors: list[str] = []

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        tp = TopicPartition(msg.topic(), msg.partition())
        self.ends[tp] = max(self.ends.get(tp, 0), msg.offset() + 1)


def fill_topic(
    bootstrap: str, topic: str, values: Iterable[bytes]
) -> tuple[dict[TopicPartition, int], float]:
    """Produce every value (null key: spread over partitions);
    returns end offsets and seconds taken.
    """
    producer = confluent_producer(bootstrap)
    tracker = EndTracker()
    started = time.perf_counter()
    for value in values:
        while True:
            try:
                producer.produce(topic, value=value, on_delivery=tracker)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - started
    if remaining or tracker.errors:
        raise RuntimeError(
            f"filling {topic}: {remaining} undelivered, errors: {tracker.errors[:3]}"
        )
    return tracker.ends, seconds


def settings_for(bootstrap: str, work_dir: Path, tag: str, partitions: int) -> Settings:
    from etl.config import KafkaSettings
    from sinks.duckdb import DuckDBSettings

    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        partitions=partitions,
        raw_topic=f"bench-raw-{tag}",
        normalized_topic=f"bench-normalized-{tag}",
        dlq_topic=f"bench-dlq-{tag}",
        group_prefix=f"bench-{tag}",
    )
    return Settings(
        kafka=kafka,
        sinks=["duckdb"],
        duckdb=DuckDBSettings(path=work_dir / f"ours-{tag}.duckdb"),
        data_dir=work_dir / f"state-{tag}",
    )


# ------------------------------------------------------------------ readings
def ready_time(log_path: Path) -> float | None:
    """Unix time of the worker's first ``[^Worker]: Ready`` log line."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if '"[^Worker]: Ready"' in line and line.startswith("{"):
            ts = orjson.loads(line)["ts"]
            return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    return None


def wait_ready(workers: list[WorkerProcess], timeout: float = 90.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        times = {str(w.log_path): ready_time(w.log_path) for w in workers}
        if all(t is not None for t in times.values()):
            return times  # type: ignore[return-value]
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.role} died; log {w.log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not ready after {timeout:.0f}s: {times}")
        time.sleep(0.1)


def warehouse_span(path: Path) -> dict[str, Any]:
    """Rows and the first/last ``loaded_at`` (unix seconds) of the warehouse's events."""
    from sinks.duckdb import wait_for_lock

    con = wait_for_lock(path, timeout=60)
    try:
        events, first, last = con.execute(
            "SELECT count(*), epoch_us(min(loaded_at)), epoch_us(max(loaded_at)) FROM events"
        ).fetchone()
        rejected = con.execute("SELECT count(*) FROM rejected_events").fetchone()[0]
        batches = con.execute("SELECT count(DISTINCT loaded_at) FROM events").fetchone()[0]
    finally:
        con.close()
    return {
        "events": events,
        "rejected": rejected,
        "batches": batches,
        "first_loaded": first / 1e6 if first is not None else None,
        "last_loaded": last / 1e6 if last is not None else None,
    }


def last_record_time(settings: Settings, topics: list[str]) -> float | None:
    """Newest broker record timestamp (CreateTime, unix s) over ``topics``:
    when a stage last produced.
    """
    kc = kafka_tools.consumer(settings)
    try:
        tps = [tp for t in topics for tp in kafka_tools.partitions(kc, t)]
        ends = kafka_tools.true_end_offsets(kc, tps)
        probe = [tp for tp in tps if ends[tp] > 0]
        if not probe:
            return None
        kc.assign(probe)
        for tp in probe:
            kc.seek(tp, ends[tp] - 1)
        newest: float | None = None
        pending = set(probe)
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            for tp, records in kc.poll(timeout_ms=300, max_records=1000).items():
                for r in records:
                    if r.offset == ends[tp] - 1:
                        pending.discard(tp)
                        newest = max(newest or 0.0, r.timestamp / 1000)
        return newest
    finally:
        kc.close()


# ------------------------------------------------------------------ profiling
class Profiler:
    """py-spy attached to a worker: a flamegraph SVG plus collapsed stacks for the report."""

    def __init__(self, pid: int, name: str, out_dir: Path, rate: int = 67) -> None:
        self.name = name
        self.svg = out_dir / f"profile-{name}.svg"
        self.raw = out_dir / f"profile-{name}.collapsed.tmp"
        spy = str(Path(sys.executable).with_name("py-spy"))
        common = ["record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"]
        self.processes = [
            subprocess.Popen(
                [spy, *common, "--format", "flamegraph", "-o", str(self.svg)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [spy, *common, "--format", "raw", "-o", str(self.raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for p in self.processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ------------------------------------------------------------------ ours
@dataclass
class OursRun:
    pipeline: LocalPipeline
    normalize_workers: list[WorkerProcess]
    sink_worker: WorkerProcess
    result: dict[str, Any] = field(default_factory=dict)
    profiles: list[Profiler] = field(default_factory=list)


def run_ours(
    settings: Settings,
    work_dir: Path,
    ends: dict[TopicPartition, int],
    events: int,
    normalize_workers: int = 1,
    profile_dir: Path | None = None,
    timeout: float = 900.0,
) -> OursRun:
    """Start the real workers on the pre-filled raw topic and time them until drained.

    The workers are left running (the latency phase reuses them); the caller stops them.
    """
    env_extra = {
        "ETL_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    pipeline = LocalPipeline.create(settings, work_dir, env_extra)
    pipeline.produced_ends.update(ends)
    logs = work_dir / "logs"
    normalizers = [
        start_worker("normalize", pipeline.env, free_port(), logs / f"normalize-{i}")
        for i in range(normalize_workers)
    ]
    sink = start_worker("sink:duckdb", pipeline.env, free_port(), logs / "sink")
    pipeline.workers.extend([*normalizers, sink])
    run = OursRun(pipeline, normalizers, sink)
    try:
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            run.profiles = [
                Profiler(normalizers[0].process.pid, "normalize", profile_dir),
                Profiler(sink.process.pid, "sink-duckdb", profile_dir),
            ]  # type: ignore[union-attr]
        wall = time.monotonic()
        cpu_at_ready, busy_at_ready = _cpu_at_ready([*normalizers, sink])
        # The end time comes from the warehouse; a slow poll steals less CPU from the workers.
        pipeline.wait_drained(timeout, poll=1.0)
        wall = time.monotonic() - wall
        cpu = _cpu_since(cpu_at_ready, busy_at_ready, [*normalizers, sink])
    finally:
        for prof in run.profiles:
            prof.stop()
    ready = [ready_time(w.log_path) for w in normalizers]
    sink_ready = ready_time(sink.log_path)
    start = min(t for t in ready if t is not None)
    span = warehouse_span(Path(settings.duckdb.path))
    normalized_at = last_record_time(
        settings, [settings.kafka.normalized_topic, settings.kafka.dlq_topic]
    )
    seconds = span["last_loaded"] - start
    run.result = {
        "events": events,
        "seconds": round(seconds, 3),
        "eps": round(events / seconds, 1),
        "normalize_seconds": round(normalized_at - start, 3) if normalized_at else None,
        "normalize_eps": round(events / (normalized_at - start), 1) if normalized_at else None,
        "wall_seconds_incl_join": round(wall, 3),
        "join_seconds": round(
            start - min(w_start for w_start in [_process_start(w) for w in normalizers]), 3
        ),
        "sink_ready_after_normalize_s": round(sink_ready - start, 3) if sink_ready else None,
        "warehouse_events": span["events"],
        "warehouse_rejected": span["rejected"],
        "sink_batches": span["batches"],
        "normalize_workers": normalize_workers,
        "partitions": settings.kafka.partitions,
        "rss_mb": {f"normalize-{i}": vm_hwm_mb(w.process.pid) for i, w in enumerate(normalizers)}  # type: ignore[union-attr]
        | {"sink-duckdb": vm_hwm_mb(sink.process.pid)},  # type: ignore[union-attr]
        "cpu_seconds": cpu,
    }
    return run


def _worker_name(worker: WorkerProcess, index: int) -> str:
    return "sink-duckdb" if worker.role.kind == "sink" else f"normalize-{index}"


def _cpu_at_ready(
    workers: list[WorkerProcess], timeout: float = 90.0
) -> tuple[dict[int, float], float]:
    """Each worker's CPU time when its Ready line appears (start-up and group join excluded),
    and the machine's busy time at the first of them.
    """
    at_ready: dict[int, float] = {}
    busy = None
    deadline = time.monotonic() + timeout
    while len(at_ready) < len(workers) and time.monotonic() < deadline:
        for i, worker in enumerate(workers):
            if i not in at_ready and ready_time(worker.log_path) is not None:
                at_ready[i] = cpu_seconds(worker.process.pid) or 0.0  # type: ignore[union-attr]
                busy = machine_busy_seconds() if busy is None else busy
        time.sleep(0.05)
    return at_ready, busy if busy is not None else machine_busy_seconds()


def _cpu_since(
    at_ready: dict[int, float], busy_at_ready: float, workers: list[WorkerProcess]
) -> dict[str, float | None]:
    """CPU seconds each worker used from Ready to drained; ``other``: the rest of the
    machine's busy time meanwhile (the broker, the bench's polling, anything else running).
    """
    used: dict[str, float | None] = {}
    for i, worker in enumerate(workers):
        now = cpu_seconds(worker.process.pid)  # type: ignore[union-attr]
        used[_worker_name(worker, i)] = (
            round(now - at_ready[i], 2) if now is not None and i in at_ready else None
        )
    busy = machine_busy_seconds() - busy_at_ready
    used["other"] = round(busy - sum(v for v in used.values() if v is not None), 2)
    return used


def _process_start(worker: WorkerProcess) -> float:
    """Unix start time of a worker process (from /proc), to report the join time we exclude."""
    pid = worker.process.pid  # type: ignore[union-attr]
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def stop_run(run: OursRun) -> None:
    with contextlib.suppress(Exception):
        run.pipeline.stop()
