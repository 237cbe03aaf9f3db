"""``etl status``: one screen on the whole pipeline.

Per consumer group and partition: committed offset, true end offset, lag.
Rates come from the workers' ``/metrics`` when ``--metrics`` URLs are given
(two scrapes ``interval`` seconds apart: events in/out per stage and sink,
backpressure pauses, flag-gated counts); otherwise from two samples of the
committed offsets (records/s per group).  DLQ counts by reason come from the
DLQ topic (after the purge watermark).
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from etl import kafka_tools
from etl.offsets import beginning_offsets, group_offsets, topic_partitions
from sinks.settings import Settings
from streams.roles import consumed_topics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def read_samples(url: str, timeout: float = 3.0) -> Samples:
    """One worker's /metrics as {(name, sorted labels): value}; raises OSError when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - operator-given URL
        text = resp.read().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def scrape(urls: list[str], timeout: float = 3.0) -> tuple[Samples, list[str]]:
    """Sum the samples of all reachable workers; returns (samples, unreachable urls)."""
    samples: Samples = defaultdict(float)
    unreachable = []
    for url in urls:
        try:
            worker = read_samples(url, timeout)
        except OSError:
            unreachable.append(url)
            continue
        for key, value in worker.items():
            if key[0] == "etl_sink_paused_since_seconds":
                # A gauge of a time: the earliest pause among workers, not a sum.
                old = samples.get(key, 0.0)
                samples[key] = min(old, value) if old and value else (old or value)
            else:
                samples[key] += value
    return dict(samples), unreachable


def _labels(key: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(key)


def metric_rates(first: Samples, second: Samples, interval: float) -> dict[str, Any]:
    rates_in: dict[str, float] = {}
    rates_out: dict[str, dict[str, float]] = defaultdict(dict)
    for (name, key), value in second.items():
        delta = max(0.0, value - first.get((name, key), 0.0)) / interval
        labels = _labels(key)
        if name == "etl_events_in_total":
            rates_in[labels["stage"]] = round(delta, 1)
        elif name == "etl_events_out_total":
            rates_out[labels["stage"]][labels["outcome"]] = round(delta, 1)
    return {"events_in_per_second": rates_in, "events_out_per_second": dict(rates_out)}


def metric_state(samples: Samples) -> dict[str, Any]:
    paused: dict[str, str] = {}
    stopped: list[str] = []
    faults: dict[str, list[str]] = defaultdict(list)
    gated: dict[str, float] = {}
    dlq_metric: dict[str, float] = defaultdict(float)
    for (name, key), value in samples.items():
        labels = _labels(key)
        if name == "etl_sink_paused_since_seconds" and value > 0:
            paused[labels["sink"]] = datetime.fromtimestamp(value, UTC).isoformat()
        elif name == "etl_sink_stopped" and value > 0:
            stopped.append(labels["sink"])
        elif name == "etl_sink_fault" and value > 0:
            faults[labels["sink"]].append(labels["cause"])
        elif name == "etl_gated_total":
            gated[f"{labels.get('sink')}/{labels.get('flag')}"] = value
        elif name == "etl_dlq_total":
            dlq_metric[labels["reason"]] += value
    return {
        "paused_since": paused,
        "stopped": sorted(stopped),
        "environment_faults": {sink: sorted(causes) for sink, causes in sorted(faults.items())},
        "gated": gated,
        "dlq_by_reason_since_start": dict(dlq_metric),
    }


def collect(
    settings: Settings,
    *,
    metrics_urls: list[str] | None = None,
    interval: float = 0.0,
    include_dlq: bool = True,
) -> dict[str, Any]:
    targets = {
        "normalize" if role.kind == "normalize" else str(role.sink): (
            settings.group(role),
            consumed_topics(settings, role),
        )
        for role in settings.roles()
    }
    first_scrape: Samples = {}
    unreachable: list[str] = []
    if metrics_urls:
        first_scrape, unreachable = scrape(metrics_urls)
    kc = kafka_tools.consumer(settings)
    try:
        all_tps = topic_partitions(
            kc, sorted({t for _, topics in targets.values() for t in topics})
        )

        def sample() -> dict[str, list[Any]]:
            # One true-end measurement for all topics, shared by the groups.
            ends: dict[Any, int] = {}
            for topic in dict.fromkeys(
                tp.topic for tp in all_tps
            ):  # one topic per request, as beginning_offsets
                ends.update(
                    kafka_tools.true_end_offsets(kc, [tp for tp in all_tps if tp.topic == topic])
                )
            known = (ends, beginning_offsets(kc, all_tps))
            return {
                name: group_offsets(settings, group, topics, kc, known)
                for name, (group, topics) in targets.items()
            }

        started = time.monotonic()
        first = sample()
        second = first
        if interval > 0:
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
            second = sample()
        elapsed = max(time.monotonic() - started, 1e-9)
    finally:
        kc.close()
    groups = []
    for name, (group, _) in targets.items():
        rows = second[name]
        before = {(r.topic, r.partition): r.committed or 0 for r in first[name]}
        committed_rate = (
            sum((r.committed or 0) - before[(r.topic, r.partition)] for r in rows) / elapsed
            if interval > 0
            else None
        )
        groups.append(
            {
                "name": name,
                "group": group,
                "lag": sum(r.lag for r in rows),
                "records_per_second": round(committed_rate, 1)
                if committed_rate is not None
                else None,
                "partitions": [asdict(r) for r in rows],
            }
        )
    doc: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(),
        "groups": groups,
        "total_lag": sum(g["lag"] for g in groups),
    }
    if metrics_urls:
        second_scrape, unreachable = (
            scrape(metrics_urls) if interval > 0 else (first_scrape, unreachable)
        )
        doc["metrics"] = {**metric_state(second_scrape), "unreachable": unreachable}
        if interval > 0:
            doc["metrics"].update(metric_rates(first_scrape, second_scrape, elapsed))
    if include_dlq:
        from ops.dlq import read_dead_letters, summarize

        doc["dlq"] = summarize(read_dead_letters(settings))
    return doc


def render(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"etl status  {doc['at']}  total lag {doc['total_lag']}")
    for col in ("group", "topic", "partition", "committed", "end", "lag"):
        table.add_column(
            col, justify="right" if col in ("partition", "committed", "end", "lag") else "left"
        )
    for g in doc["groups"]:
        rate = f"  {g['records_per_second']} rec/s" if g["records_per_second"] is not None else ""
        for i, p in enumerate(g["partitions"]):
            table.add_row(
                f"{g['group']}{rate}" if i == 0 else "",
                p["topic"],
                str(p["partition"]),
                "-" if p["committed"] is None else str(p["committed"]),
                str(p["end"]),
                str(p["lag"]),
            )
        table.add_section()
    console.print(table)
    m = doc.get("metrics")
    if m:
        rates = Table(title="workers (from /metrics)")
        rates.add_column("stage")
        rates.add_column("in/s", justify="right")
        rates.add_column("out/s by outcome")
        stages = sorted(
            set(m.get("events_in_per_second", {})) | set(m.get("events_out_per_second", {}))
        )
        for stage in stages:
            outs = ", ".join(
                f"{k} {v}"
                for k, v in sorted(m.get("events_out_per_second", {}).get(stage, {}).items())
            )
            rates.add_row(stage, str(m.get("events_in_per_second", {}).get(stage, "-")), outs)
        console.print(rates)
        console.print(
            f"paused by backpressure: {m['paused_since'] or 'none'}   "
            f"stopped (auth): {m['stopped'] or 'none'}"
        )
        faults = m.get("environment_faults") or {}
        if faults:
            console.print(
                "[red]paused by the environment: "
                + ", ".join(f"{sink} ({', '.join(c)})" for sink, c in faults.items())
                + "[/red]"
            )
        console.print(f"flag-gated: {m['gated'] or 'none'}")
        if m["unreachable"]:
            console.print(f"[yellow]unreachable: {', '.join(m['unreachable'])}[/yellow]")
    dlq = doc.get("dlq")
    if dlq is not None:
        t = Table(title=f"dead letters: {dlq['total']}")
        t.add_column("stage")
        t.add_column("reason")
        t.add_column("count", justify="right")
        for row in dlq["by_stage_reason"]:
            t.add_row(row["stage"], row["reason"], str(row["count"]))
        console.print(t)
