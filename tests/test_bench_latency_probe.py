"""The latency phase's probe stamp must not change which path the pipeline takes.

Every probe event carries its send time. A 19-digit stamp (nanoseconds since
the epoch) is a possible out-of-int64 number, so each probe event took the
sanitiser's slow re-parse, which the throughput workload almost never does:
the phase measured a costlier event than the one it was meant to time.
"""

from __future__ import annotations

import time

import orjson

from bench.latency import stamp_sent, track_events
from mappers.sanitise import has_long_number


def test_a_stamped_probe_event_keeps_the_fast_path_of_its_unstamped_self() -> None:
    events = track_events(500, seed=3)
    plain = [ev for ev in events if not has_long_number(orjson.dumps(ev))]
    assert len(plain) > 400  # the mix itself rarely holds a 19-digit number
    before = time.time_ns() // 1000
    for ev in plain:
        stamp_sent(ev, run_tag=3)
    after = time.time_ns() // 1000
    assert [ev for ev in plain if has_long_number(orjson.dumps(ev))] == []
    assert all(ev["properties"]["bench_run"] == 3 for ev in plain)
    assert all(before <= ev["properties"]["bench_sent_us"] <= after for ev in plain)
