"""Throughput of the PostHog and RudderStack sinks against the local protocol servers.

``python -m bench.http_sinks [--events N] [--e2e-events N] [--quick]``

1. In process: the real delivery runtime (``Deliverer``: fit, split by bytes,
   write) driving each sink's ``write()`` at several batch sizes.
2. End to end: the bundled broker and real ``etl worker`` processes
   (normalize + one process per HTTP sink); events/s from producing until each
   destination holds every valid event.

The protocol servers run in their own processes so that their JSON parsing
does not compete with the code under test for this process's GIL.  Prints a
table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

PH_KEY = "phc_bench_project_key"
WRITE_KEY = "bench_write_key"


# ---------------------------------------------------------------- servers
def _serve(kind: str, conn: Connection) -> None:
    from tests.servers import PostHogServer, RudderStackServer

    server = PostHogServer(PH_KEY) if kind == "posthog" else RudderStackServer(WRITE_KEY)
    server.start()
    conn.send(server.url)
    while True:
        command = conn.recv()
        if command == "count":
            ids = server.uuids() if kind == "posthog" else server.message_ids()
            conn.send((len(ids), len(set(ids))))
        elif command == "clear":
            server.clear()
            conn.send(True)
        else:
            server.stop()
            conn.send(True)
            return


class ServerProcess:
    def __init__(self, kind: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(kind, child), daemon=True)
        self.process.start()
        self.url: str = self.conn.recv()

    def _ask(self, command: str) -> Any:
        self.conn.send(command)
        return self.conn.recv()

    def counts(self) -> tuple[int, int]:
        """(events accepted, unique ids)"""
        return self._ask("count")

    def clear(self) -> None:
        self._ask("clear")

    def stop(self) -> None:
        self._ask("stop")
        self.process.join(10)


# ----------------------------------------------------------------- events
def unified_events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Realistic unified events exactly as a delivering agent decodes them."""
    from ops.harness.synthetic import Generator
    from ops.inprocess import normalize_values

    values = [msg.value for msg in Generator(seed=seed, batch_rate=0.0).messages(n)]
    return normalize_values(values, topic="events.raw")


def settings_for(ph_url: str, rs_url: str, batch: int) -> Any:
    from sinks.settings import Settings

    return Settings(
        sinks=["posthog", "rudderstack"],
        posthog={"api_key": PH_KEY, "host": ph_url, "max_batch_events": batch},
        rudderstack={"write_key": WRITE_KEY, "data_plane_url": rs_url, "max_batch_events": batch},
    )


# ------------------------------------------------------------- in process
def in_process(
    events: list[dict[str, Any]],
    servers: dict[str, ServerProcess],
    batch_sizes: dict[str, list[int]],
) -> list[dict[str, Any]]:
    from sinks.registry import sink_class
    from streams.outputs import DeadLetters, MemoryOutput
    from streams.stages import SinkStage

    rows = []
    for name, sizes in batch_sizes.items():
        for batch in sizes:
            servers[name].clear()
            settings = settings_for(servers["posthog"].url, servers["rudderstack"].url, batch)
            sink = sink_class(name)(settings)
            sink.open()
            dead = MemoryOutput()
            stage = SinkStage(settings, sink, DeadLetters(dead, settings))
            # Fresh dicts: nothing cached from an earlier run.
            work = orjson.loads(orjson.dumps(events))

            async def run(
                work: list[dict[str, Any]] = work, batch: int = batch, stage: SinkStage = stage
            ) -> None:
                for start in range(0, len(work), batch):
                    await stage.deliver(work[start : start + batch])

            started, cpu_started = time.perf_counter(), time.process_time()
            asyncio.run(run())
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            sink.close()
            accepted, unique = servers[name].counts()
            wire = sum(sink.event_size(ev) for ev in work[:2000]) / min(len(work), 2000)
            rows.append(
                {
                    "mode": "in-process write()",
                    "sink": name,
                    "batch": batch,
                    "events": len(work),
                    "delivered_unique": unique,
                    "dead_lettered": len(dead.messages),
                    "seconds": round(seconds, 3),
                    "events_per_second": round(len(work) / seconds),
                    "avg_event_bytes": round(wire),
                    # This process only (mapping, sizing, encoding, gzip, HTTP client);
                    # the server runs elsewhere.
                    "sink_cpu_us_per_event": round(cpu / len(work) * 1e6, 1),
                }
            )
            assert unique == len(work) - len(dead.messages), (
                f"{name}: {unique} of {len(work)} delivered"
            )
    return rows


# ------------------------------------------------------------- end to end
def end_to_end(
    n: int, servers: dict[str, ServerProcess], partitions: int = 4
) -> list[dict[str, Any]]:
    from etl.config import KafkaSettings
    from ops.harness.broker import EmbeddedBroker
    from ops.harness.local_pipeline import LocalPipeline
    from streams.supervisor import stop_workers

    for s in servers.values():
        s.clear()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-http-sinks-"))
    broker = EmbeddedBroker(log_path=work_dir / "broker.log").start()
    pipeline = None
    try:
        base = settings_for(servers["posthog"].url, servers["rudderstack"].url, 1000)
        settings = base.model_copy(
            update={
                "kafka": KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=partitions),
                "data_dir": work_dir / "state",
            }
        )
        env = {
            "POSTHOG_API_KEY": PH_KEY,
            "POSTHOG_HOST": servers["posthog"].url,
            "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
            "RUDDERSTACK_DATA_PLANE_URL": servers["rudderstack"].url,
            "ETL_FLAGS__GATES": "{}",  # measure delivery, not gating
        }
        pipeline = LocalPipeline.create(settings, work_dir, env)
        pipeline.start()
        warm = [
            orjson.dumps(
                {"event": "warmup", "distinct_id": f"w{i}", "timestamp": "2026-11-20T10:00:00Z"}
            )
            for i in range(20)
        ]
        pipeline.produce(warm)
        pipeline.wait_drained(120)
        baseline = {name: s.counts()[1] for name, s in servers.items()}

        rows = []
        # Live: workers running while the events are produced (bounded by the producer too).
        values, valid = generated(n, seed=7)
        started = time.perf_counter()
        pipeline.produce(values)
        produced_in = time.perf_counter() - started
        _, done = watch(servers, baseline, valid, started, pipeline, n)
        # Watching starts once producing returns, so no first-delivery time here.
        rows += e2e_rows(
            "end-to-end live",
            servers,
            baseline,
            valid,
            {},
            done,
            started=0.0,
            produce_seconds=produced_in,
        )

        # Backlog: the sink workers are down while events pile up and are
        # normalized; then they start and drain it (rate from their first delivery).
        sink_workers = [w for w in pipeline.workers if w.role.is_sink]
        stop_workers(sink_workers)
        for w in sink_workers:
            pipeline.workers.remove(w)
        baseline = {name: s.counts()[1] for name, s in servers.items()}
        values, valid = generated(n, seed=8)
        pipeline.produce(values)
        wait_normalized(pipeline, 300 + n / 200)
        started = time.perf_counter()
        pipeline.start([w.role for w in sink_workers])
        first, done = watch(servers, baseline, valid, started, pipeline, n)
        rows += e2e_rows(
            "end-to-end backlog",
            servers,
            baseline,
            valid,
            first,
            done,
            started=None,
            produce_seconds=None,
        )
        return rows
    finally:
        if pipeline is not None:
            pipeline.stop()
        broker.stop()


def generated(n: int, seed: int) -> tuple[list[bytes], int]:
    from ops.harness.synthetic import Generator

    values, valid = [], 0
    for msg in Generator(seed=seed, batch_rate=0.0).messages(n):
        values.append(msg.value)
        valid += msg.valid
    return values, valid


def watch(
    servers: dict[str, ServerProcess],
    baseline: dict[str, int],
    valid: int,
    started: float,
    pipeline: Any,
    n: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds since ``started`` of each destination's first new event
    and of it holding every valid event.
    """
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    deadline = time.monotonic() + 300 + n / 200
    while len(done) < len(servers) and time.monotonic() < deadline:
        for name, s in servers.items():
            unique = s.counts()[1] - baseline[name]
            now = time.perf_counter() - started
            if unique > 0 and name not in first:
                first[name] = now
            # The generator's count of valid events is a floor: a few of its
            # "malformed" messages may normalize (see the report).
            if unique >= valid and name not in done:
                done[name] = now
        pipeline.check_alive()
        time.sleep(0.05)
    return first, done


def wait_normalized(pipeline: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, total = pipeline.drain_state().groups[pipeline.settings.normalize_group]
        if done >= total:
            return
        time.sleep(0.2)
    raise TimeoutError("normalize did not finish the backlog")


def e2e_rows(
    mode: str,
    servers: dict[str, ServerProcess],
    baseline: dict[str, int],
    valid: int,
    first: dict[str, float],
    done: dict[str, float],
    started: float | None,
    produce_seconds: float | None,
) -> list[dict[str, Any]]:
    rows = []
    for name, s in servers.items():
        unique = s.counts()[1] - baseline[name]
        end = done.get(name)
        begin = started if started is not None else first.get(name)
        seconds = end - begin if end is not None and begin is not None else None
        rows.append(
            {
                "mode": mode,
                "sink": name,
                "batch": 5000,
                "events": valid,
                "delivered_unique": unique,
                "dead_lettered": None,
                "seconds": round(seconds, 3) if seconds else None,
                "events_per_second": round(valid / seconds) if seconds else 0,
                "produce_seconds": round(produce_seconds, 3)
                if produce_seconds is not None
                else None,
                "seconds_to_first_delivery": round(first[name], 3) if name in first else None,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'mode':<20} {'sink':<12} {'batch':>6} {'events':>8} {'delivered':>10} {'seconds':>8} "
        f"{'events/s':>9} {'cpu us/ev':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['mode']:<20} {r['sink']:<12} {r['batch']:>6} {r['events']:>8} "
            f"{r['delivered_unique']:>10} {r['seconds'] if r['seconds'] is not None else '-':>8} "
            f"{r['events_per_second']:>9} {r.get('sink_cpu_us_per_event', '-'):>9}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per in-process run")
    parser.add_argument(
        "--e2e-events", type=int, default=20_000, help="events produced for the end-to-end run"
    )
    parser.add_argument("--quick", action="store_true", help="5,000 events each")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end run")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = args.e2e_events = 5_000

    servers = {name: ServerProcess(name) for name in ("posthog", "rudderstack")}
    try:
        events = unified_events(args.events)
        rows = in_process(
            events, servers, {"posthog": [100, 500, 1000], "rudderstack": [100, 250, 500]}
        )
        if not args.no_e2e:
            rows += end_to_end(args.e2e_events, servers)
    finally:
        for s in servers.values():
            s.stop()
    print_table(rows)
    print(orjson.dumps({"benchmark": "http_sinks", "results": rows}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
