"""``etl status``: one screen on the whole pipeline (``--watch``: a live one).

Per consumer group and partition: committed offset, true end offset, lag.
Rates come from the workers' ``/metrics`` when ``--metrics`` URLs are given
(two scrapes ``interval`` seconds apart: events in/out per stage and sink,
backpressure pauses, flag-gated counts); otherwise from two samples of the
committed offsets (records/s per group).  DLQ counts by reason come from the
DLQ topic (after the purge watermark).  Without URLs, the local workers are
found from their run files in the data dir (``streams.runfiles``), and
``ETL_METRICS_URLS`` lists them in production.
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
from streams import runfiles
from streams.roles import consumed_topics

#: A dead letter without an event name (unparseable input) is counted under this key.
NO_EVENT = "(no event)"

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
    backoff: dict[str, float] = defaultdict(float)
    retries: dict[str, float] = defaultdict(float)
    stopped: list[str] = []
    faults: dict[str, list[str]] = defaultdict(list)
    gated: dict[str, float] = {}
    dlq_metric: dict[str, float] = defaultdict(float)
    for (name, key), value in samples.items():
        labels = _labels(key)
        if name == "etl_sink_paused_since_seconds" and value > 0:
            paused[labels["sink"]] = datetime.fromtimestamp(value, UTC).isoformat()
        elif name == "etl_sink_backpressure_seconds_total":
            backoff[labels["sink"]] += value
        elif name == "etl_sink_retries_total":
            retries[labels["sink"]] += value
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
        "backoff_seconds_total": {k: round(v, 3) for k, v in backoff.items()},
        "retries_total": dict(retries),
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
        "metrics_urls": list(metrics_urls or []),
    }
    if metrics_urls:
        second_scrape, unreachable = (
            scrape(metrics_urls) if interval > 0 else (first_scrape, unreachable)
        )
        doc["metrics"] = {**metric_state(second_scrape), "unreachable": unreachable}
        if interval > 0:
            doc["metrics"].update(metric_rates(first_scrape, second_scrape, elapsed))
    # Projected loads a day under each sink's flush policy (vendor quotas and cost).
    from streams.batching import projected_loads

    doc["loads"] = projected_loads(settings, {g["name"]: g["records_per_second"] for g in groups})
    if include_dlq:
        from ops.dlq import read_dead_letters, summarize

        doc["dlq"] = named_events(summarize(read_dead_letters(settings)))
    return doc


def named_events(summary: dict[str, Any]) -> dict[str, Any]:
    """A DLQ summary whose ``by_event`` has no "None" key (letters that had no event name)."""
    if "by_event" in summary:
        summary["by_event"] = {
            (NO_EVENT if k in (None, "None") else k): v for k, v in summary["by_event"].items()
        }
    return summary


def metrics_targets(settings: Settings, given: list[str] | None = None) -> list[str]:
    """Where to scrape: the URLs given, else ETL_METRICS_URLS, else the local run files."""
    if given:
        return given
    if settings.metrics_urls:
        return list(settings.metrics_urls)
    return [str(d["metrics_url"]) for d in runfiles.discover(settings.data_dir)]


def role_rows(doc: dict[str, Any], previous: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per role: lag, rates, dead-letter growth, sink health and back-off."""
    m = doc.get("metrics") or {}
    ins = m.get("events_in_per_second", {})
    outs = m.get("events_out_per_second", {})
    dlq_now = (doc.get("dlq") or {}).get("by_stage_reason", [])
    dlq_before = ((previous or {}).get("dlq") or {}).get("by_stage_reason", [])

    def dead(rows: list[dict[str, Any]], stage: str) -> int:
        return sum(r["count"] for r in rows if r["stage"] == stage)

    rows = []
    for g in doc["groups"]:
        name = g["name"]
        stage = "normalize" if name == "normalize" else f"sink:{name}"
        out = outs.get(stage, {})
        if name in m.get("stopped", []):
            health = "stopped (auth)"
        elif name in m.get("paused_since", {}):
            health = f"backing off since {m['paused_since'][name]}"
        elif not m:
            health = "no metrics"
        else:
            health = "ok"
        rows.append(
            {
                "role": "normalize" if name == "normalize" else f"sink:{name}",
                "group": g["group"],
                "lag": g["lag"],
                "records_per_second": g["records_per_second"],
                "events_in_per_second": ins.get(stage, ins.get(name)),
                "events_out_per_second": sum(out.values()) if out else None,
                "dead_letters": dead(dlq_now, stage),
                "dead_letters_new": dead(dlq_now, stage) - dead(dlq_before, stage)
                if previous is not None
                else 0,
                "health": health,
                "backoff_seconds_total": m.get("backoff_seconds_total", {}).get(name, 0.0),
                "retries_total": m.get("retries_total", {}).get(name, 0.0),
            }
        )
    return rows


def screen(doc: dict[str, Any], previous: dict[str, Any] | None = None) -> Any:
    """The ``--watch`` frame: a rich renderable of :func:`role_rows` and the workers found."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    dlq = doc.get("dlq") or {}
    table = Table(
        title=f"etl status --watch  {doc['at']}  total lag {doc['total_lag']}"
        f"  dead letters {dlq.get('total', '-')}",
        expand=False,
    )
    columns = ("role", "lag", "rec/s", "in/s", "out/s", "dlq", "dlq new", "health", "back-off s")
    for col in columns:
        table.add_column(col, justify="left" if col in ("role", "health") else "right")

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    for r in role_rows(doc, previous):
        health = r["health"]
        style = "green" if health == "ok" else "yellow" if health.startswith("backing") else "red"
        table.add_row(
            r["role"],
            str(r["lag"]),
            num(r["records_per_second"]),
            num(r["events_in_per_second"]),
            num(r["events_out_per_second"]),
            str(r["dead_letters"]),
            f"+{r['dead_letters_new']}" if r["dead_letters_new"] else "0",
            Text(health, style=style),
            num(r["backoff_seconds_total"]),
        )
    m = doc.get("metrics")
    if m is None:
        footer = "workers: none found (start one, or set ETL_METRICS_URLS / --metrics)"
    else:
        footer = f"workers scraped: {len(doc.get('metrics_urls', []))}"
        if m.get("unreachable"):
            footer += f"  unreachable: {', '.join(m['unreachable'])}"
    return Group(table, Text(footer + "   (Ctrl-C to stop)", style="dim"))


def watch(
    settings: Settings,
    *,
    metrics_urls: list[str] | None = None,
    interval: float = 2.0,
    include_dlq: bool = True,
    frames: int | None = None,
    console: Any = None,
) -> None:
    """Redraw :func:`screen` every ``interval`` seconds (``frames`` bounds it, for tests)."""
    from rich.live import Live

    previous: dict[str, Any] | None = None
    shown = 0
    from rich.text import Text

    with Live(console=console, auto_refresh=False, transient=False) as live:
        live.update(Text("etl status --watch: taking the first samples..."), refresh=True)
        while frames is None or shown < frames:
            urls = metrics_targets(settings, metrics_urls)  # workers come and go
            doc = collect(settings, metrics_urls=urls, interval=interval, include_dlq=include_dlq)
            live.update(screen(doc, previous), refresh=True)
            previous = doc
            shown += 1


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
    if doc.get("loads"):
        loads = Table(title="projected loads per day (flush policy)")
        for col in ("sink", "events/s", "policy", "loads/day", "max wait s"):
            loads.add_column(col)
        for p in doc["loads"]:
            rate = f"{p['events_per_second']:g}" + ("" if p["measured"] else " (nominal)")
            policy = (
                f"{p['max_events']} ev / {p['max_seconds']:g} s, >= {p['min_interval']:g} s apart"
            )
            behind = " [red]falls behind[/red]" if p["falls_behind"] else ""
            loads.add_row(
                p["sink"], rate, policy, f"{p['loads_per_day']}{behind}", str(p["max_wait_seconds"])
            )
        console.print(loads)
    dlq = doc.get("dlq")
    if dlq is not None:
        t = Table(title=f"dead letters: {dlq['total']}")
        t.add_column("stage")
        t.add_column("reason")
        t.add_column("count", justify="right")
        for row in dlq["by_stage_reason"]:
            t.add_row(row["stage"], row["reason"], str(row["count"]))
        console.print(t)
