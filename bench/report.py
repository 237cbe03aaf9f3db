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

from bench.calibration import reference_us
from etl.compiled import SOURCES, compiled_modules


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
        "msgspec",
        "pyarrow",
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
        "msgspec": versions["msgspec"],
        "pyarrow": versions["pyarrow"],
        # The hot path's compiled modules (etl/compiled.py) in use, of those listed.
        "compiled_modules": f"{len(compiled_modules())}/{len(SOURCES)}",
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        # Other work on the machine skews every number; keep the evidence.
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
        # The machine's speed, to set this run's absolute numbers against another's.
        "reference_us_start": reference_us(),
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def machine_at_end(doc: dict[str, Any]) -> None:
    """Add the load and the machine's speed at the end of the run to ``doc["machine"]``."""
    doc["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    doc["machine"]["reference_us_end"] = reference_us()


def speed_text(doc: dict[str, Any]) -> str:
    """The reference workload's time at the run's start and end (bench/calibration.py)."""
    m = doc["machine"]
    return (
        f"reference workload {m.get('reference_us_start')} -> {m.get('reference_us_end')} "
        "µs per iteration (lower is faster; compare runs by it)"
    )


def _speed_title(doc: dict[str, Any]) -> str:
    start = doc["machine"].get("reference_us_start")
    return f", reference workload {start} µs" if start is not None else ""


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
#: The final JSON line's first keys, in order.
HEADLINE = (
    "ours_eps",
    "peer_eps",
    "ceiling_eps",
    "fulljob_eps",
    "ratio_peer",
    "ratio_ceiling",
    "ratio_fulljob",
    "normalize_alone_eps",
    "peer_layout",
    "p50_ms",
    "p99_ms",
    "rss_mb",
)


def headline(doc: dict[str, Any]) -> dict[str, Any]:
    """The final JSON line: headline numbers first, then everything else."""
    return {
        **{k: doc.get(k) for k in HEADLINE},
        **{k: v for k, v in doc.items() if k not in HEADLINE},
    }


def print_tables(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    stages = doc["stages"]
    work = doc["workload"]
    table = Table(
        title=f"throughput - {work['events']:,} events, {work['partitions']} partitions"
        f" (* = the peer layout ratio_peer uses)"
    )
    table.add_column("contender")
    table.add_column("events/s", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("peak RSS MiB", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column("what")
    ceiling, fulljob, ours = stages.get("ceiling"), stages.get("fulljob"), stages.get("ours")
    if ceiling:
        table.add_row(
            "ceiling",
            f"{ceiling['eps']:,.0f}",
            f"{ceiling['seconds']:.2f}",
            "",
            "",
            "aiokafka getmany + orjson.loads, no output",
        )
    if fulljob:
        table.add_row(
            "full-job ceiling",
            f"{fulljob['eps']:,.0f}",
            f"{fulljob['seconds']:.2f}",
            _mb(fulljob.get("rss_mb")),
            "",
            "aiokafka + msgspec + Arrow -> DuckDB, 1 process, no framework",
        )
    for layout, what in (
        ("single", "Quix: our stages, 1 process"),
        ("split", "Quix: our stages, normalize app -> topic -> sink app"),
    ):
        peer = stages.get(f"peer_{layout}")
        if peer:
            mark = " *" if doc.get("peer_layout") == layout else ""
            table.add_row(
                f"peer {layout}{mark}",
                f"{peer['eps']:,.0f}",
                f"{peer['seconds']:.2f}",
                ", ".join(f"{k} {_mb(v)}" for k, v in peer["rss_mb"].items()),
                cpu_text(peer.get("cpu_seconds")),
                what,
            )
    if ours:
        rss = ", ".join(f"{k} {_mb(v)}" for k, v in ours["rss_mb"].items())
        table.add_row(
            "ours (etl workers)",
            f"{ours['eps']:,.0f}",
            f"{ours['seconds']:.2f}",
            rss,
            cpu_text(ours.get("cpu_seconds")),
            "raw -> normalize -> Kafka -> sink:duckdb",
        )
        if ours.get("normalize_eps"):
            table.add_row(
                "  ours: normalize stage",
                f"{ours['normalize_eps']:,.0f}",
                f"{ours['normalize_seconds']:.2f}",
                "",
                "",
                "raw -> normalized/dlq topics",
            )
    alone = stages.get("normalize_alone")
    if alone:
        table.add_row(
            "normalize stage alone",
            f"{alone['eps']:,.0f}",
            f"{alone['cpu_seconds']:.2f}",
            "",
            "NormalizeStage.process + envelopes, 1 core (CPU time), no broker",
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
        t.add_column("slowest batch, ms", justify="right")
        for size, r in sink.items():
            slowest = r.get("max_ms_per_batch")
            t.add_row(
                size,
                f"{r['rows_per_s']:,.0f}",
                f"{r['ms_per_batch']:.1f}",
                "" if slowest is None else f"{slowest:.0f}",
            )
        console.print(t)
    for key, load in (("latency", "half"), ("latency_quarter", "quarter")):
        lat = stages.get(key)
        if lat:
            console.print(
                f"latency at {load} load, {lat['achieved_rate']:,.0f} ev/s "
                f"(target {lat['target_rate']:,.0f}): "
                f"p50 {lat['p50_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms, "
                f"p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms "
                f"(+ write {lat['write_ms_mean']} ms mean until commit)"
            )
    summary = Table(title="headline", show_header=False)
    for key in HEADLINE:
        summary.add_row(key, str(doc.get(key)))
    console.print(summary)
    console.print(speed_text(doc))
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


def cpu_text(per_process: dict[str, float | None] | None) -> str:
    """CPU seconds per process of a contender (ours adds ``other``: the rest of the machine)."""
    if not per_process:
        return ""
    return ", ".join(f"{k} {v:.1f}" if v is not None else f"{k} ?" for k, v in per_process.items())


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


def run_date(doc: dict[str, Any]) -> str:
    return str(doc["machine"].get("date", "undated")).replace("T", " ").replace("Z", " UTC")


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = chart_figure(doc)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_figure(doc: dict[str, Any]) -> Any:
    """The run's chart: every contender on one linear axis from zero, titled with the run's date."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = doc["stages"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    names, values, colors = [], [], []
    for label, key, field, color in (
        ("ceiling\n(aiokafka\n+orjson,\nno output)", "ceiling", "eps", "#bbbbbb"),
        ("full job\n(aiokafka\n+msgspec+Arrow\n->DuckDB)", "fulljob", "eps", "#888888"),
        ("peer single\n(Quix,\n1 process)", "peer_single", "eps", "#d98c3f"),
        ("peer split\n(Quix,\n2 processes)", "peer_split", "eps", "#f0b070"),
        ("ours\nend\nto end", "ours", "eps", "#3f7fd9"),
        ("ours\nnormalize\nworker", "ours", "normalize_eps", "#7fb0f0"),
        ("normalize\nstage alone,\n1 core", "normalize_alone", "eps", "#b8d4f8"),
    ):
        value = (stages.get(key) or {}).get(field)
        if value:
            names.append(label)
            values.append(value)
            colors.append(color)
    bars = left.bar(names, values, color=colors)
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    # A linear axis from zero: the bars' heights are the ratios the headline reports.
    left.set_ylim(bottom=0)
    left.set_ylabel("events/s (linear, from 0)")
    left.tick_params(axis="x", labelsize=6)
    load = max(doc["machine"].get("loadavg_1m_start", 0), doc["machine"].get("loadavg_1m_end", 0))
    left.set_title(
        f"throughput, {doc['workload']['events']:,} events, {doc['workload']['partitions']} "
        f"partitions, {doc['machine']['nproc']} CPUs (load avg up to {load})",
        fontsize=9,
    )
    sink = stages.get("sink_alone") or {}
    if sink:
        sizes = list(sink)
        rates = [sink[s]["rows_per_s"] for s in sizes]
        colors = ["#9fd0b4" if "held" in s else "#3f9f6f" for s in sizes]
        labels = [
            s.replace(" held", "\nheld")
            .replace(", 16 MB checkpoints", "\n16 MB")
            .replace(", merges always", "\nmerges\nalways")
            for s in sizes
        ]
        bars = right.bar(labels, rates, color=colors)
        right.bar_label(bars, labels=[f"{v:,.0f}" for v in rates], fontsize=8)
        right.set_ylim(bottom=0)
        right.set_xlabel("events per write (held: file kept open between writes)")
        right.set_ylabel("rows/s (linear, from 0)")
        right.set_title("DuckDBSink.write alone", fontsize=9)
    fig.suptitle(f"python -m bench, run of {run_date(doc)}{_speed_title(doc)}", fontsize=10)
    fig.tight_layout()
    return fig


def scaling_chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = scaling_figure(doc)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling_figure(doc: dict[str, Any]) -> Any:
    """Throughput and peak RSS against partitions (= normalize workers) and against events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (rows, x_key, x_label) in enumerate(
        (
            (doc["scaling"], "partitions", "partitions = normalize workers"),
            (doc.get("sizes") or [], "events", "events in the run"),
        )
    ):
        rows = sorted(rows, key=lambda r: r[x_key])
        xs = [r[x_key] for r in rows]
        eps_ax, rss_ax = axes[0][col], axes[1][col]
        eps_ax.plot(xs, [r["eps"] for r in rows], marker="o", label="end to end")
        eps_ax.plot(
            xs, [r["normalize_eps"] or 0 for r in rows], marker="s", label="normalize stage"
        )
        eps_ax.set_ylabel("events/s (linear, from 0)")
        rss_ax.plot(xs, [r["rss_mb"].get("sink-duckdb") or 0 for r in rows], marker="o",
                    label="sink-duckdb")  # fmt: skip
        rss_ax.plot(xs, [_max_normalize_rss(r) for r in rows], marker="s",
                    label="normalize (largest)")  # fmt: skip
        rss_ax.axhline(300, color="#cc3333", linestyle="--", linewidth=1, label="target 300 MiB")
        rss_ax.set_ylabel("peak RSS MiB (linear, from 0)")
        for ax in (eps_ax, rss_ax):
            ax.set_ylim(bottom=0)
            ax.set_xlim(left=0)
            ax.set_xticks(xs)
            ax.set_xlabel(x_label)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        if x_key == "events":
            for ax in (eps_ax, rss_ax):
                ax.set_xticklabels([_count(x) for x in xs])
    axes[0][0].set_title(f"{doc['events']:,} events, N partitions", fontsize=9)
    axes[0][1].set_title(f"{doc.get('sizes_partitions', 2)} partitions, growing runs", fontsize=9)
    fig.suptitle(
        f"ours (etl workers) scaling on {doc['machine']['nproc']} CPUs, run of {run_date(doc)}"
        f"{_speed_title(doc)}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _count(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def _max_normalize_rss(row: dict[str, Any]) -> float:
    values = [v for k, v in row["rss_mb"].items() if k.startswith("normalize") and v]
    return max(values, default=0.0)
