"""How fast this machine is right now, by a fixed reference workload.

The events/s of one run are comparable only within that run: the machine is
shared, and on another day the same code has run at less than half the speed
(2026-12-07: the normalize stage alone took 28 µs per message against 10-11
µs three days before, with nothing else running).  Each run therefore times
the same small piece of work, of the kind the pipeline does (building dicts,
JSON in and out, string handling), at its start and at its end, so that two
runs' absolute numbers can be set against each other's machine speed.

The workload must never change: a changed workload makes every earlier
run's reference meaningless.  :data:`WORKLOAD_CHECKSUM` pins its output.
"""

from __future__ import annotations

import hashlib
import time

import orjson

#: Iterations of :func:`_workload` per timed pass.
ITERATIONS = 20_000
#: sha256 of the workload's output over ITERATIONS iterations (see the module doc).
WORKLOAD_CHECKSUM = "a7f878b668ce3192edfc2f434490edaeffa1a7cb8987718582217440f9a629f5"


def _workload(iterations: int) -> bytes:
    """Event-shaped dicts through orjson and back, with some string work; the last output."""
    out = b""
    digest = 0
    for i in range(iterations):
        event = {
            "event": "tool_used",
            "distinct_id": f"user-{i % 997}",
            "properties": {"tool": "search", "latency_ms": i % 5000, "ok": i % 7 != 0},
            "context": {"library": {"name": "posthog-python", "version": "6.7.0"}},
        }
        decoded = orjson.loads(orjson.dumps(event))
        name = decoded["distinct_id"].upper().replace("USER", "u")
        digest = (digest * 31 + len(name) + decoded["properties"]["latency_ms"]) % 1_000_003
        out = orjson.dumps({"n": digest, "name": name})
    return out


def checksum(iterations: int = ITERATIONS) -> str:
    return hashlib.sha256(_workload(iterations)).hexdigest()


def reference_us(passes: int = 5, iterations: int = ITERATIONS) -> float:
    """CPU µs per workload iteration, the best of ``passes`` (lower = faster machine)."""
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        _workload(iterations)
        best = min(best, time.process_time() - started)
    return round(best * 1e6 / iterations, 3)
