"""The bench's reference workload: fixed, so runs on different days compare by it."""

from __future__ import annotations

from bench.calibration import ITERATIONS, WORKLOAD_CHECKSUM, checksum, reference_us


def test_the_reference_workload_has_not_changed() -> None:
    # Changing the workload makes every earlier run's reference meaningless.
    assert checksum() == WORKLOAD_CHECKSUM


def test_the_workload_depends_on_every_iteration() -> None:
    assert checksum(ITERATIONS - 1) != WORKLOAD_CHECKSUM


def test_the_reference_is_cpu_microseconds_per_iteration() -> None:
    few, many = reference_us(passes=3, iterations=2_000), reference_us(passes=3)
    assert 0 < few < 1_000 and 0 < many < 1_000
    # Per iteration, so the pass length does not change it by much (not a total).
    assert 0.25 < few / many < 4
