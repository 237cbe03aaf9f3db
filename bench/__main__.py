"""``python -m bench`` (``make bench``): ours vs the peer vs the ceiling, in one run.

Phases, all against one bundled broker on loopback and one pre-filled raw topic
(a seeded ``etl.synthetic.Generator`` mix: every event type, ~2% malformed,
single-event messages by default):

1. ceiling - aiokafka ``getmany`` + ``orjson.loads`` (bench/ceiling.py);
2. fulljob - the same job hand-written: aiokafka + msgspec + Arrow -> DuckDB (bench/fulljob.py);
3. peer    - Quix Streams running our stages, in one process and in our two-process
             topology; the faster layout is the peer (bench/peer_quix.py);
4. ours    - the real ``etl`` workers, raw -> normalized -> DuckDB (bench/pipeline.py);
5. latency - paced produce at 50% of ours, produce -> warehouse (bench/latency.py);
6. sink    - ``DuckDBSink.write`` alone at several batch sizes (bench/sinkbench.py);
7. normalize alone - ``NormalizeStage`` in this process, one core (bench/normalize_alone.py).

Prints tables and, last, one JSON line; writes bench/results/latest.json and
bench/results/bench.png.  ``--scaling`` instead measures ours with 1, 2 and 4
partitions (= normalize workers); ``--profile`` attaches py-spy to our workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.ceiling import run_ceiling
from bench.fulljob import run_fulljob
from bench.latency import run_latency
from bench.normalize_alone import run_normalize_alone
from bench.peer_quix import run_peer
from bench.pipeline import (
    OursRun,
    fill_generated,
    fill_topic,
    make_workload,
    run_ours,
    settings_for,
    stop_run,
)
from bench.sinkbench import run_sink_alone
from etl import kafka_tools
from etl.compiled import stale_modules
from ops.harness.broker import EmbeddedBroker

RESULTS = Path(__file__).resolve().parent / "results"
SINK_SIZES = (500, 2000, 5000, 10000)
PEER_LAYOUTS = ("single", "split")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def broker_at(bootstrap: str | None, work_dir: Path):
    if bootstrap:
        yield bootstrap
        return
    broker = EmbeddedBroker(log_path=work_dir / "broker.log").start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def run_bench(
    events: int = 1_000_000,
    partitions: int = 2,
    seed: int = 7,
    malformed_rate: float = 0.02,
    batch_rate: float = 0.0,
    latency_seconds: float = 20.0,
    sink_rows: int = 100_000,
    profile: bool = False,
    bootstrap: str | None = None,
    work_dir: Path | None = None,
    out_dir: Path | None = RESULTS,
) -> dict[str, Any]:
    """Run every phase and return the result document (also written to ``out_dir`` if given)."""
    own_dir = work_dir is None
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="etl-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"machine": report.machine(), "profiled": profile}
    try:
        with broker_at(bootstrap, work_dir) as boot:
            log(
                f"generating {events:,} events (seed {seed}, malformed {malformed_rate:.0%}, "
                f"batch envelopes {batch_rate:.0%})"
            )
            workload = make_workload(events, seed, malformed_rate, batch_rate)
            tag = uuid.uuid4().hex[:8]
            settings = settings_for(boot, work_dir, tag, partitions)
            kafka_tools.ensure_topics(settings)
            ends, fill_seconds = fill_topic(boot, settings.kafka.raw_topic, workload.values)
            log(
                f"filled {settings.kafka.raw_topic}: {len(workload.values):,} messages, "
                f"{workload.nbytes / 1e6:.1f} MB in {fill_seconds:.1f}s"
            )
            doc["workload"] = {
                "events": workload.events,
                "messages": len(workload.values),
                "valid": workload.valid,
                "rejected": workload.rejected,
                "bytes": workload.nbytes,
                "seed": seed,
                "malformed_rate": malformed_rate,
                "batch_rate": batch_rate,
                "partitions": partitions,
                "fill_seconds": round(fill_seconds, 2),
            }
            stages: dict[str, Any] = {}
            doc["stages"] = stages

            log("ceiling: aiokafka getmany + orjson.loads")
            stages["ceiling"] = run_ceiling(
                boot, settings.kafka.raw_topic, len(workload.values), workload.events
            )
            log(f"ceiling {stages['ceiling']['eps']:,.0f} events/s")

            log("fulljob: aiokafka + msgspec + Arrow -> DuckDB, no framework (subprocess)")
            stages["fulljob"] = run_fulljob(
                boot,
                settings.kafka.raw_topic,
                f"bench-{tag}-fulljob",
                work_dir / f"fulljob-{tag}.duckdb",
                messages=len(workload.values),
                events=workload.events,
                session_timeout=settings.kafka.session_timeout,
            )
            if len(workload.values) == workload.events:  # it reads a batch envelope as one
                _check_landed("fulljob", stages["fulljob"], workload.events)
            log(f"fulljob {stages['fulljob']['eps']:,.0f} events/s")

            for layout in PEER_LAYOUTS:
                log(f"peer: Quix Streams, {layout} layout (subprocesses)")
                peer = run_peer(
                    boot,
                    settings.kafka.raw_topic,
                    f"bench-{tag}-quix-{layout}",
                    work_dir / f"peer-{layout}-{tag}.duckdb",
                    messages=len(workload.values),
                    events=workload.events,
                    partitions=partitions,
                    batch_max_events=settings.delivery.batch_max_events,
                    flush_interval=settings.delivery.flush_interval,
                    session_timeout=settings.kafka.session_timeout,
                    layout=layout,
                )
                # Every event is accounted for (landed or rejected); the generator's
                # own valid/rejected labels are reported but not trusted as exact.
                _check_landed(f"peer {layout}", peer, workload.events, stages.get("peer_single"))
                stages[f"peer_{layout}"] = peer
                log(
                    f"peer {layout} {peer['eps']:,.0f} events/s; "
                    f"CPU seconds {report.cpu_text(peer['cpu_seconds'])}"
                )

            log("ours: etl workers (normalize + sink:duckdb)" + (" with py-spy" if profile else ""))
            run: OursRun | None = None
            try:
                run = run_ours(
                    settings,
                    work_dir / "ours",
                    ends,
                    workload.events,
                    profile_dir=(out_dir or work_dir) if profile else None,
                )
                stages["ours"] = run.result
                _check_landed("ours", run.result, workload.events, stages["peer_single"])
                log(
                    f"ours {run.result['eps']:,.0f} events/s "
                    f"(normalize stage {run.result['normalize_eps'] or 0:,.0f}); "
                    f"CPU seconds {report.cpu_text(run.result['cpu_seconds'])}"
                )
                if latency_seconds > 0:
                    rate = max(50.0, run.result["eps"] / 2)
                    log(f"latency: {rate:,.0f} events/s for {latency_seconds:.0f}s")
                    stages["latency"] = run_latency(run, rate, latency_seconds, seed=seed + 1)
                    # A quarter load shows the floor when the two cores are not saturated
                    # (the paced producer itself shares them).
                    log(f"latency: {rate / 2:,.0f} events/s for {latency_seconds / 2:.0f}s")
                    stages["latency_quarter"] = run_latency(
                        run, max(25.0, rate / 2), max(1.0, latency_seconds / 2), seed=seed + 2
                    )
            finally:
                if run is not None:
                    stop_run(run)

            log(f"sink alone: DuckDBSink.write, batch sizes {SINK_SIZES}")
            stages["sink_alone"] = run_sink_alone(
                workload.values, work_dir, SINK_SIZES, min(sink_rows, workload.valid)
            )

            log("normalize stage alone: NormalizeStage in this process, one core")
            stages["normalize_alone"] = run_normalize_alone(workload.values, settings)
            log(f"normalize stage alone {stages['normalize_alone']['eps']:,.0f} events/s")

            if profile and run is not None:
                doc["profiles"] = {
                    p.name: report.summarize_profile(p.raw) | {"flamegraph": str(p.svg)}
                    for p in run.profiles
                    if p.raw.exists()
                }
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    ours, ceiling = stages.get("ours", {}), stages.get("ceiling", {})
    fulljob = stages.get("fulljob", {})
    peers = {k: stages[f"peer_{k}"] for k in PEER_LAYOUTS if f"peer_{k}" in stages}
    # The fair peer is the faster of its layouts: we do not get to pick its weaker one.
    peer_layout = max(peers, key=lambda k: peers[k]["eps"]) if peers else None
    peer = peers.get(peer_layout, {}) if peer_layout else {}
    latency = stages.get("latency", {})
    doc.update(
        {
            "ours_eps": ours.get("eps"),
            "peer_eps": peer.get("eps"),
            "ceiling_eps": ceiling.get("eps"),
            "fulljob_eps": fulljob.get("eps"),
            "ratio_peer": round(ours["eps"] / peer["eps"], 3) if ours and peer else None,
            "ratio_ceiling": round(ours["eps"] / ceiling["eps"], 4) if ours and ceiling else None,
            "ratio_fulljob": round(ours["eps"] / fulljob["eps"], 4) if ours and fulljob else None,
            "normalize_alone_eps": stages.get("normalize_alone", {}).get("eps"),
            "peer_layout": peer_layout,
            "p50_ms": latency.get("p50_ms"),
            "p99_ms": latency.get("p99_ms"),
            "rss_mb": round(max(v for v in ours["rss_mb"].values() if v is not None), 1)
            if ours
            else None,
            "peer_rss_mb": round(max(peer["rss_mb"].values()), 1) if peer.get("rss_mb") else None,
            "definitions": DEFINITIONS,
        }
    )
    report.machine_at_end(doc)
    doc = report.headline(doc)
    if out_dir is not None:
        # A profiled run is slowed by py-spy: it never replaces the latest result.
        report.write_outputs(doc, out_dir, name="profile-run" if profile else "latest")
    return doc


DEFINITIONS = {
    "events": "events in the workload = valid + rejected (a malformed message counts as one)",
    "clock": "start = consumption begins (ours: normalize worker's Faust 'Worker: Ready' log line "
    "after the group join; peer: first message in the (normalize) app's dataframe; ceiling and "
    "fulljob: first fetched batch); end = max(events.loaded_at) in the warehouse (start of the "
    "last DuckDB write); group join and process start-up excluded for all",
    "ours": "real etl workers: normalize (1 per partition share) and sink:duckdb processes, raw -> "
    "events.normalized/events.dlq (acks=all) -> DuckDB, as deployed",
    "peer_single": "Quix Streams, 1 process: raw -> our NormalizeStage -> same JSON round trip -> "
    "our SinkStage (DuckDB) in a BatchingSink (commit_every = batch_max_events x partitions, "
    "commit_interval = flush_interval)",
    "peer_split": "Quix Streams in our topology, 2 processes started together: a normalize app "
    "(raw -> NormalizeStage -> envelopes + dead letters to its own topics through Quix's "
    "producer, flushed before each commit) and a sink app (those topics -> SinkStage.receive / "
    "store_rejected -> DuckDB); clock from the normalize app's first record",
    "peer_eps": "the faster of peer_single and peer_split (named by peer_layout); "
    "ratio_peer = ours_eps / peer_eps",
    "ceiling": "aiokafka getmany(max_records=10000) + orjson.loads per message, no output",
    "fulljob": "hand-written, 1 process: aiokafka getmany -> msgspec Struct decode (both "
    "dialects) -> column lists -> Arrow -> DuckDB INSERT ... SELECT per 122,880 rows or 1 s, "
    "offsets committed after each; minimal validation, no typed tables, flags, redaction or "
    "MERGE (bench/fulljob.py); ratio_fulljob = ours_eps / fulljob_eps",
    "latency": "paced produce at 50% of ours_eps with properties.bench_sent_us; latency = "
    "loaded_at - sent; warm workers; visible at COMMIT, i.e. + write_ms_mean",
    "latency_quarter": "the same at 25% of ours_eps, for half as long (p50_ms/p99_ms are the "
    "half-load phase)",
    "rss_mb": "max VmHWM over our worker processes after the throughput run",
    "normalize_alone": "NormalizeStage.process + envelopes over the workload's first 200,000 "
    "messages in the bench process, batches of the worker's size, the workers' collector "
    "settings; process CPU time, best of 3 passes (bench/normalize_alone.py)",
}


def _check_landed(
    name: str, result: dict[str, Any], events: int, same_as: dict[str, Any] | None = None
) -> None:
    landed = (result.get("warehouse_events"), result.get("warehouse_rejected"))
    if sum(x or 0 for x in landed) != events:
        raise RuntimeError(
            f"{name}: warehouse holds {landed[0]} events + {landed[1]} rejections, "
            f"expected {events} in all"
        )
    if same_as is not None and landed != (
        same_as["warehouse_events"],
        same_as["warehouse_rejected"],
    ):
        raise RuntimeError(
            f"{name}: landed {landed}, but the peer landed "
            f"{same_as['warehouse_events'], same_as['warehouse_rejected']}"
        )


def run_scaling(
    events: int,
    seed: int,
    counts: tuple[int, ...] = (1, 2, 4),
    sizes: tuple[int, ...] = (100_000, 1_000_000),
    sizes_partitions: int = 2,
    out_dir: Path | None = RESULTS,
    bootstrap: str | None = None,
) -> dict[str, Any]:
    """Ours with N partitions and N normalize workers at ``events``, then ``sizes`` events each.

    One sink worker throughout: DuckDB has one writer per file.
    """
    work_dir = Path(tempfile.mkdtemp(prefix="etl-bench-scaling-"))
    cpus = os.cpu_count() or 1
    doc: dict[str, Any] = {
        "machine": report.machine(),
        "events": events,
        "scaling": [],
        "sizes_partitions": sizes_partitions,
        "sizes": [],
        "note": f"{cpus} CPUs shared by the broker, N normalize workers, 1 sink worker and this "
        f"harness: with N >= {cpus} the extra workers compete for the same cores, so gains beyond "
        "~1 core of normalize work are not expected here; the single sink worker (one DuckDB "
        "writer per file) caps end-to-end throughput whatever N is.",
    }
    cases = [("scaling", events, n) for n in counts]
    cases += [("sizes", size, sizes_partitions) for size in sizes]
    done: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        with broker_at(bootstrap, work_dir) as boot:
            for series, size, n in cases:
                if (size, n) in done:  # the same case in both series: measured once
                    doc[series].append(done[size, n])
                    continue
                tag = f"s{n}-{uuid.uuid4().hex[:6]}"
                settings = settings_for(boot, work_dir, tag, n)
                kafka_tools.ensure_topics(settings)
                ends, workload = fill_generated(boot, settings.kafka.raw_topic, size, seed)
                log(f"scaling: {size:,} events, {n} partition(s), {n} normalize worker(s)")
                run = run_ours(settings, work_dir / tag, ends, workload.events, normalize_workers=n)
                stop_run(run)
                _check_landed(f"ours x{n}", run.result, workload.events)
                keys = ("partitions", "normalize_workers", "eps", "normalize_eps", "seconds")
                row = {k: run.result[k] for k in keys}
                row |= {"events": workload.events, "rss_mb": run.result["rss_mb"]}
                row["loadavg_1m"] = round(os.getloadavg()[0], 2)
                done[size, n] = row
                doc[series].append(row)
                log(
                    f"  {row['eps']:,.0f} events/s end to end, "
                    f"normalize stage {row['normalize_eps'] or 0:,.0f}"
                )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    report.machine_at_end(doc)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "scaling.json").write_bytes(
            orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        )
        with contextlib.suppress(ImportError):
            report.scaling_chart(doc, out_dir / "scaling.png")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="ours vs peer vs ceiling, in one run"
    )
    parser.add_argument(
        "--events", type=int, default=None, help="events to produce (default 1,000,000)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="100,000 events, shorter latency phase"
    )
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--malformed-rate", type=float, default=0.02)
    parser.add_argument(
        "--batch-rate",
        type=float,
        default=0.0,
        help="share of batch envelopes (headline: 0, single-event messages)",
    )
    parser.add_argument("--latency-seconds", type=float, default=None)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flamegraphs of our workers into the results directory",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="ours with 1, 2 and 4 partitions/normalize workers (at --events, default 100,000), "
        "then at each of --sizes events",
    )
    parser.add_argument(
        "--sizes",
        default="100000,1000000",
        help="--scaling: comma-separated run sizes, at 2 partitions",
    )
    parser.add_argument(
        "--bootstrap", default=None, help="use this broker instead of starting the bundled one"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stale = stale_modules()
    if stale:
        # The compiled build is what would run: the numbers would not be this source's.
        print(
            f"bench: {', '.join(stale)} changed after the compiled build; run `make compile`",
            file=sys.stderr,
        )
        return 2
    events = args.events or (100_000 if args.quick else 1_000_000)
    if args.scaling:
        sizes = tuple(int(x) for x in args.sizes.split(",") if x.strip())
        doc = run_scaling(
            args.events or 100_000,
            args.seed,
            sizes=sizes,
            out_dir=args.out,
            bootstrap=args.bootstrap,
        )
        for row in doc["scaling"] + doc["sizes"]:
            print(
                f"events={row['events']:,} partitions={row['partitions']} "
                f"workers={row['normalize_workers']}: {row['eps']:,.0f} events/s "
                f"(normalize stage {row['normalize_eps'] or 0:,.0f})"
            )
        print(orjson.dumps(doc).decode(), flush=True)
        return 0
    latency = (
        args.latency_seconds if args.latency_seconds is not None else (8.0 if args.quick else 20.0)
    )
    doc = run_bench(
        events=events,
        partitions=args.partitions,
        seed=args.seed,
        malformed_rate=args.malformed_rate,
        batch_rate=args.batch_rate,
        latency_seconds=latency,
        sink_rows=20_000 if args.quick else 100_000,
        profile=args.profile,
        bootstrap=args.bootstrap,
        out_dir=args.out,
    )
    report.print_tables(doc)
    load = max(doc["machine"]["loadavg_1m_start"], doc["machine"]["loadavg_1m_end"])
    if load > (os.cpu_count() or 1) / 2:
        print(
            f"WARNING: load average {load} on {os.cpu_count()} CPUs: other work competed with "
            "this run; numbers are low",
            file=sys.stderr,
        )
    print(orjson.dumps(doc).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
