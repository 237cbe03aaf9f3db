"""The benchmark's pictures are honest: linear axes from zero, and the date of their run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from bench import report  # noqa: E402

MACHINE = {"nproc": 2, "date": "2026-12-02T04:10:00Z", "loadavg_1m_start": 1.5}


def _doc() -> dict:
    stage = {"eps": 1000.0, "seconds": 1.0, "rss_mb": 100.0}
    return {
        "machine": MACHINE,
        "workload": {"events": 2000, "partitions": 2},
        "peer_layout": "split",
        "stages": {
            "ceiling": {"eps": 200_000.0, "seconds": 0.01},
            "fulljob": stage | {"eps": 150_000.0},
            "peer_single": stage | {"eps": 9_000.0, "rss_mb": {"quix": 200.0}},
            "peer_split": stage | {"eps": 11_000.0},
            "ours": stage | {"eps": 12_000.0, "normalize_eps": 20_000.0},
            "sink_alone": {"500": {"rows_per_s": 30_000.0, "ms_per_batch": 16.0}},
        },
    }


def _row(events: int, partitions: int, eps: float) -> dict:
    return {
        "events": events,
        "partitions": partitions,
        "normalize_workers": partitions,
        "eps": eps,
        "normalize_eps": eps * 2,
        "seconds": events / eps,
        "rss_mb": {"normalize-0": 180.0, "sink-duckdb": 400.0 + events / 1e4},
    }


def test_the_run_chart_is_linear_from_zero_and_dated(tmp_path: Path) -> None:
    fig = report.chart_figure(_doc())
    for ax in fig.axes:
        assert ax.get_yscale() == "linear"
        assert ax.get_ylim()[0] == 0
    bars = fig.axes[0].patches
    # Every contender, both peer layouts and the full-job ceiling included.
    assert len(bars) == 6
    assert max(b.get_height() for b in bars) == 200_000.0
    assert "2026-12-02 04:10:00 UTC" in fig._suptitle.get_text()
    report.chart(_doc(), tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_the_scaling_chart_shows_throughput_and_rss_from_zero_dated(tmp_path: Path) -> None:
    doc = {
        "machine": MACHINE,
        "events": 100_000,
        "sizes_partitions": 2,
        "scaling": [_row(100_000, n, 5000.0 * n) for n in (1, 2, 4)],
        "sizes": [_row(n, 2, 10_000.0) for n in (100_000, 1_000_000)],
    }
    fig = report.scaling_figure(doc)
    assert len(fig.axes) == 4  # throughput and RSS, against partitions and against events
    for ax in fig.axes:
        assert ax.get_yscale() == "linear" and ax.get_xscale() == "linear"
        assert ax.get_ylim()[0] == 0 and ax.get_xlim()[0] == 0
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert any("RSS" in label for label in labels) and any("events/s" in label for label in labels)
    assert "2026-12-02 04:10:00 UTC" in fig._suptitle.get_text()
    report.scaling_chart(doc, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
