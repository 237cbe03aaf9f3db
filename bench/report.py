"""Presenting a benchmark run: rich tables, the JSON document, the PNG chart, profile summaries."""

from __future__ import annotations

import os
import platform
import re
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in (
        "faust-streaming",
        "aiokafka",
        "duckdb",
        "quixstreams",
        "confluent-kafka",
        "orjson",
        "pydantic",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": platform.python_version(),
        "faust": versions["faust-streaming"],
        "aiokafka": versions["aiokafka"],
        "duckdb": versions["duckdb"],
        "quixstreams": versions["quixstreams"],
        "confluent_kafka": versions["confluent-kafka"],
        "orjson": versions["orjson"],
        "pydantic": versions["pydantic"],
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        # Other work on the machine skews every number; keep the evidence.
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


# ----------------------------------------------------------------- profiles
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_key(frame: str) -> str:
    """'func (path/to/module.py:123)' -> 'func (module path tail)' without the line number."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def _bucket(frame_key: str) -> str:
    path = frame_key.rsplit("(", 1)[-1].rstrip(")")
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") if head else "other"


def summarize_profile(collapsed: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares from py-spy's collapsed (raw) output."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            _frame_key(f)
            for f in stack.split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        buckets[_bucket(frames[-1])] += n
        for key in set(frames):
            incl_counts[key] += n

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return (
            [[k, round(100 * v / total, 1)] for k, v in counter.most_common(top)] if total else []
        )

    return {
        "samples": total,
        "self_pct": shares(self_counts),
        "inclusive_pct": shares(incl_counts),
        "by_package_pct": shares(buckets),
    }


# ----------------------------------------------------------------- output
def headline(doc: dict[str, Any]) -> dict[str, Any]:
    """The final JSON line: headline numbers first, then everything else."""
    keys = (
        "ours_eps",
        "peer_eps",
        "ceiling_eps",
        "ratio_peer",
        "ratio_ceiling",
        "p50_ms",
        "p99_ms",
        "rss_mb",
    )
    return {**{k: doc.get(k) for k in keys}, **{k: v for k, v in doc.items() if k not in keys}}


def print_tables(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    stages = doc["stages"]
    table = Table(
        title=f"throughput - {doc['workload']['events']:,} events, "
        f"{doc['workload']['partitions']} partitions"
    )
    table.add_column("contender")
    table.add_column("events/s", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("peak RSS MiB", justify="right")
    table.add_column("what")
    ceiling, peer, ours = stages.get("ceiling"), stages.get("peer"), stages.get("ours")
    if ceiling:
        table.add_row(
            "ceiling",
            f"{ceiling['eps']:,.0f}",
            f"{ceiling['seconds']:.2f}",
            "",
            "aiokafka getmany + orjson.loads",
        )
    if peer:
        table.add_row(
            "peer (Quix Streams)",
            f"{peer['eps']:,.0f}",
            f"{peer['seconds']:.2f}",
            _mb(peer.get("rss_mb")),
            "consume -> Normalizer -> DuckDBSink, 1 process",
        )
    if ours:
        rss = ", ".join(f"{k} {_mb(v)}" for k, v in ours["rss_mb"].items())
        table.add_row(
            "ours (etl workers)",
            f"{ours['eps']:,.0f}",
            f"{ours['seconds']:.2f}",
            rss,
            "raw -> normalize -> Kafka -> sink:duckdb",
        )
        if ours.get("normalize_eps"):
            table.add_row(
                "  ours: normalize stage",
                f"{ours['normalize_eps']:,.0f}",
                f"{ours['normalize_seconds']:.2f}",
                "",
                "raw -> normalized/dlq topics",
            )
    console.print(table)
    sink = stages.get("sink_alone") or {}
    if sink:
        t = Table(
            title="DuckDBSink.write alone (held = file kept open between writes, as deployed)"
        )
        t.add_column("batch size", justify="right")
        t.add_column("rows/s", justify="right")
        t.add_column("ms/batch", justify="right")
        for size, r in sink.items():
            t.add_row(size, f"{r['rows_per_s']:,.0f}", f"{r['ms_per_batch']:.1f}")
        console.print(t)
    lat = stages.get("latency")
    if lat:
        console.print(
            f"latency at {lat['achieved_rate']:,.0f} ev/s (target {lat['target_rate']:,.0f}): "
            f"p50 {lat['p50_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, "
            f"max {lat['max_ms']:.0f} ms (+ write {lat['write_ms_mean']} ms mean until commit)"
        )
    summary = Table(title="headline", show_header=False)
    for key in (
        "ours_eps",
        "peer_eps",
        "ceiling_eps",
        "ratio_peer",
        "ratio_ceiling",
        "p50_ms",
        "p99_ms",
        "rss_mb",
    ):
        summary.add_row(key, str(doc.get(key)))
    console.print(summary)
    for name, prof in (doc.get("profiles") or {}).items():
        t = Table(title=f"py-spy: {name} ({prof['samples']} samples) - top self time")
        t.add_column("function")
        t.add_column("self %", justify="right")
        for func, pct in prof["self_pct"]:
            t.add_row(func, f"{pct}")
        console.print(t)
        console.print("  by package: " + ", ".join(f"{k} {v}%" for k, v in prof["by_package_pct"]))


def _mb(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "?"


def write_outputs(
    doc: dict[str, Any], out_dir: Path, name: str = "latest"
) -> tuple[Path, Path | None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    png = out_dir / ("bench.png" if name == "latest" else f"{name}.png")
    try:
        chart(doc, png)
    except ImportError:
        png = None  # matplotlib is in the bench extra; the numbers stand without the chart
    return json_path, png


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = doc["stages"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    names, values = [], []
    for label, key, field in (
        ("ceiling\n(aiokafka+orjson)", "ceiling", "eps"),
        ("peer\n(Quix Streams)", "peer", "eps"),
        ("ours\nend to end", "ours", "eps"),
        ("ours\nnormalize stage", "ours", "normalize_eps"),
    ):
        value = (stages.get(key) or {}).get(field)
        if value:
            names.append(label)
            values.append(value)
    bars = left.bar(
        names, values, color=["#888888", "#d98c3f", "#3f7fd9", "#7fb0f0"][: len(values)]
    )
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    left.set_yscale("log")  # the ceiling is orders of magnitude above the pipelines
    left.set_ylabel("events/s (log scale)")
    left.set_title(
        f"throughput ({doc['workload']['events']:,} events, {doc['machine']['nproc']} CPUs)"
    )
    sink = stages.get("sink_alone") or {}
    if sink:
        sizes = list(sink)
        rates = [sink[s]["rows_per_s"] for s in sizes]
        colors = ["#9fd0b4" if s.endswith("held") else "#3f9f6f" for s in sizes]
        bars = right.bar([s.replace(" held", "\nheld") for s in sizes], rates, color=colors)
        right.bar_label(bars, labels=[f"{v:,.0f}" for v in rates], fontsize=8)
        right.set_xlabel("events per write (held: file kept open between writes)")
        right.set_ylabel("rows/s")
        right.set_title("DuckDBSink.write alone")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling_chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["scaling"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [str(r["partitions"]) for r in rows]
    ax.plot(xs, [r["eps"] for r in rows], marker="o", label="end to end")
    ax.plot(xs, [r["normalize_eps"] or 0 for r in rows], marker="s", label="normalize stage")
    ax.set_xlabel("partitions = normalize workers")
    ax.set_ylabel("events/s")
    ax.set_title(f"scaling on {doc['machine']['nproc']} CPUs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
